"""The budget that holds: the saved set with the least predicted recompute time whose predicted peak
(the liveness simulation of the real schedule) is within the user's memory budget.

Budget semantics (DESIGN §4, on the *peak* activation memory of the step, graph inputs excluded):

- a fraction ``b``: ``least + b·(runtime_optimal − least)``, where ``runtime_optimal`` is the peak of
  the min-cut plan and ``least`` the lowest peak found;
- bytes: a cap on the predicted peak; below ``least`` the least-memory plan is used and the caller warns
  (or raises in strict mode).

Every plan considered is checked by the liveness simulation and kept in a pool; the answer is the
fastest pooled plan within the target, so it never exceeds a feasible target. Plans come from:

- the min-cut: the runtime-optimal cut and the least-bytes cut;
- the exact MILP (``milp.py``) on the model linearised around a reference plan (``budget_model.py``).
  The model is exact at its reference and approximate elsewhere (it has not seen other plans'
  recompute bursts), so a proposal the simulation rejects is followed by a solve with the cap lowered
  by the model's shortfall; for the least peak, each answer becomes the next reference;
- the greedy min-cut releases (``greedy_budget.py``): a coarse sweep up front (while time allows),
  and a bisection to the target with ``solver="greedy"`` or when the MILP fails, runs out of time or
  finds nothing faster (logged, never raised).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from autoremat.cost_models import GraphCosts
from autoremat.passes.analysis import JointGraphAnalysis
from autoremat.passes.budget_model import build_problem
from autoremat.passes.greedy_budget import greedy_sweep, greedy_to_target, least_memory_rules
from autoremat.passes.liveness import plan_peak, step_schedule
from autoremat.passes.milp import MilpResult, solve_budget
from autoremat.passes.mincut import CutResult, RecomputeRules, solve_min_cut
from autoremat.passes.plan_builder import recomputed_nodes

log = logging.getLogger("autoremat")

SOLVERS = ("milp", "greedy")
#: MILP solves per reference plan (each with a lower cap, or a new reference) before moving on
MAX_SOLVES_PER_REFERENCE = 3
#: extra margin below the target when the simulation rejected a proposal: avoids creeping up to it
CAP_MARGIN = 0.005
#: share of the time limit one MILP solve may use, and the least time worth giving one
MILP_SHARE = 0.25
MIN_SOLVE_SECONDS = 0.2
#: branch-and-bound nodes per MILP solve: bounds the work, so the answer does not depend on the clock
MILP_NODE_LIMIT = 500
#: with several ranks the clock is ignored; this only stops a pathological solve
DETERMINISTIC_SAFETY_SECONDS = 60.0
#: budget fractions a search also solves for when they are tighter than the user's: a plan found for a
#: tighter budget fits a looser one too, so with these in the pool a looser budget never picks a plan
#: slower than (or, at equal time, peaking above) what a tighter budget picks
GRID_FRACTIONS = (0.75, 0.5, 0.25, 0.1)
#: greedy release prefixes simulated up front: cheap plans between the two min-cut extremes
GREEDY_POINTS = 6


@dataclass
class BudgetSolution:
    cut: CutResult
    peak_bytes: int
    solver: str
    #: "optimal" (MILP answer within its gap, or the runtime-optimal cut) | "within-budget"
    #: (feasible, optimality unknown) | "budget-infeasible" (target below the least peak)
    status: str
    gap: float | None
    target_bytes: int
    least_bytes: int
    runtime_optimal_bytes: int
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.status != "budget-infeasible"


@dataclass(frozen=True)
class _Candidate:
    cut: CutResult
    peak: int
    time_s: float
    source: str
    gap: float | None = None


class _Pool:
    """Every plan considered, simulated once; answers 'least peak' and 'fastest within a target'."""

    def __init__(self, analysis: JointGraphAnalysis, costs: GraphCosts) -> None:
        self.analysis, self.costs = analysis, costs
        self.plans: dict[tuple[fx.Node, ...], _Candidate] = {}

    def add(self, cut: CutResult, source: str, gap: float | None = None) -> _Candidate:
        known = self.plans.get(cut.saved)
        if known is not None:
            return known
        peak = plan_peak(self.analysis, cut.saved).peak_bytes
        seconds = self.costs.value(self.costs.recompute_time(recomputed_nodes(self.analysis, cut)))
        candidate = self.plans[cut.saved] = _Candidate(cut, peak, seconds, source, gap)
        return candidate

    def least(self) -> _Candidate:
        return min(self.plans.values(), key=lambda c: (c.peak, c.time_s))

    def fastest_within(self, target: int) -> _Candidate | None:
        fitting = [c for c in self.plans.values() if c.peak <= target]
        return min(fitting, key=lambda c: (c.time_s, c.peak)) if fitting else None


class _Deadline:
    """The solver's time budget, a safety net only: each MILP stops at a branch-and-bound node limit
    first in practice, so plans do not depend on machine speed or load (same graph and options, same
    plan, DESIGN §3). With ``ignore_clock`` (several ranks planning the same graph) the clock is not
    consulted at all, so ranks agree even when one of them is slow."""

    def __init__(self, seconds: float, ignore_clock: bool = False) -> None:
        self.total = seconds
        self.ignore_clock = ignore_clock
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        if self.ignore_clock:
            return self.total
        return max(self.end - time.perf_counter(), 0.0)

    def slice(self) -> float:
        """Time for one MILP solve: a share of the total, so one hard solve cannot starve the rest
        (a solve stopped by its limit still returns its best plan and gap)."""
        if self.ignore_clock:
            return DETERMINISTIC_SAFETY_SECONDS
        return min(self.left(), max(self.total * MILP_SHARE, MIN_SOLVE_SECONDS))


def complete_saved(analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> CutResult:
    """A CutResult for ``saved`` plus the graph inputs the backward (and its recomputation) reads."""
    chosen = set(saved)
    schedule = step_schedule(analysis, chosen)
    for node in schedule.backward:
        for arg in node.all_input_nodes:
            if arg.op == "placeholder" and arg not in analysis.tangent_closure:
                chosen.add(arg)
    chosen.update(n for n in analysis.backward_reads if n.op == "placeholder")
    ordered = tuple(sorted(chosen, key=analysis.order.__getitem__))
    cut = CutResult(ordered, sum(analysis.facts[n].save_bytes for n in ordered))
    for node in recomputed_nodes(analysis, cut):
        reason = analysis.facts[node].never_recompute
        if reason is not None:
            raise RuntimeError(f"budget plan would recompute {node.name} ({reason})")
    return cut


def solve_for_budget(
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    *,
    base: RecomputeRules,
    high: CutResult,
    fraction: float | None = None,
    cap_bytes: int | None = None,
    time_limit: float = 10.0,
    solver: str = "milp",
    deterministic: bool = False,
) -> BudgetSolution:
    """Plan for a fractional budget or a byte cap on the predicted peak (exactly one of them).

    ``deterministic`` stops consulting the clock at all, for when several ranks must agree."""
    if (fraction is None) == (cap_bytes is None):
        raise ValueError("solve_for_budget needs exactly one of fraction and cap_bytes")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid: expected one of {SOLVERS}")
    deadline = _Deadline(time_limit, deterministic)
    started = time.perf_counter()
    solution = _search(analysis, costs, base, high, fraction, cap_bytes, deadline, solver)
    solution.stats["solve_seconds"] = time.perf_counter() - started
    if deadline.left() <= 0:
        solution.notes.append(
            f"solver time limit ({time_limit:g} s) reached: the plan is the best found so far and may "
            "differ between runs; raise solver_time_limit for a reproducible plan"
        )
        log.info("autoremat: %s", solution.notes[-1])
    return solution


def _search(
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    base: RecomputeRules,
    high: CutResult,
    fraction: float | None,
    cap_bytes: int | None,
    deadline: _Deadline,
    solver: str,
) -> BudgetSolution:
    """The pooled search of the module docstring; ``solve_for_budget`` validates and reports."""
    stats: dict[str, Any] = {"milp_solves": 0, "milp_seconds": 0.0}
    notes: list[str] = []
    pool = _Pool(analysis, costs)
    runtime_optimal = pool.add(high, "min-cut")
    if cap_bytes is not None and runtime_optimal.peak <= cap_bytes:
        return _solution(runtime_optimal, cap_bytes, runtime_optimal, runtime_optimal, notes, stats)

    low_cut = solve_min_cut(analysis, least_memory_rules(base))
    pool.add(low_cut, "min-cut")
    for cut in greedy_sweep(
        analysis,
        base=base,
        cost_s=costs.standalone_s,
        points=GREEDY_POINTS,
        keep_going=lambda: deadline.left() > deadline.total / 2,
    ):
        pool.add(cut, "greedy")
    milp_ok = solver == "milp" and _guard(
        notes, "least-peak", _milp_least_peak, pool, [high, low_cut], deadline, stats
    )
    least = pool.least()
    if fraction is not None:
        target = int(least.peak + fraction * (runtime_optimal.peak - least.peak))
    else:
        target = int(cap_bytes)
    if runtime_optimal.peak <= target:
        return _solution(runtime_optimal, target, least, runtime_optimal, notes, stats)
    if least.peak > target:
        solution = _solution(least, target, least, runtime_optimal, notes, stats)
        solution.status = "budget-infeasible"
        return solution

    span = runtime_optimal.peak - least.peak
    caps = [target] + [int(least.peak + f * span) for f in GRID_FRACTIONS if least.peak + f * span < target]
    for cap in caps if milp_ok else ():
        # Linearise around the best plan known to fit (the model is closest to the truth near it),
        # then around the runtime-optimal plan.
        fitting = pool.fastest_within(cap) or least
        references = list({c.saved: c for c in (fitting.cut, high)}.values())
        milp_ok = _guard(notes, "budget", _milp_to_target, pool, references, cap, deadline, stats)
    best = pool.fastest_within(target)
    if not milp_ok or best is None or best.source != "milp":
        if solver == "milp":
            reason = "ran out of time" if deadline.left() <= 0 else "found no faster plan within the target"
            notes.append(f"MILP {reason} (limit {deadline.total:g} s); tried the greedy solver too")
            log.info("autoremat: %s", notes[-1])
        outcome = greedy_to_target(
            analysis,
            target_bytes=target,
            base=base,
            cost_s=costs.standalone_s,
            measure=lambda cut: pool.add(cut, "greedy").peak,
            high=high,
            low=low_cut,
            keep_going=lambda: deadline.left() > 0,
        )
        pool.add(outcome.cut, "greedy")
        best = pool.fastest_within(target)
    assert best is not None  # `least` fits the target
    return _solution(best, target, pool.least(), runtime_optimal, notes, stats)


def _solution(
    best: _Candidate,
    target: int,
    least: _Candidate,
    runtime_optimal: _Candidate,
    notes: list[str],
    stats: dict[str, Any],
) -> BudgetSolution:
    if best.source == "milp":
        solver, status = "milp", ("optimal" if best.gap is not None and best.gap <= 0.01 else "within-budget")
    elif best is runtime_optimal:
        solver, status = "min-cut", "optimal"
    else:
        solver, status = best.source, "within-budget"
    gap = best.gap if best.source == "milp" else (0.0 if best is runtime_optimal else None)
    return BudgetSolution(
        best.cut, best.peak, solver, status, gap, target, least.peak, runtime_optimal.peak, notes, stats
    )


def _guard(notes: list[str], what: str, run: Callable[..., None], *args: Any) -> bool:
    """Run a MILP stage; a failure is logged and noted, and the other plans stand."""
    try:
        run(*args)
    except Exception as exc:  # noqa: BLE001 - a solver failure degrades to the min-cut/greedy plans
        notes.append(f"MILP {what} solve failed ({type(exc).__name__}: {exc}); using min-cut/greedy plans")
        log.warning("autoremat: %s", notes[-1])
        return False
    return True


def _count(stats: dict[str, Any], result: MilpResult) -> None:
    stats["milp_solves"] += 1
    stats["milp_seconds"] += result.solve_seconds
    stats["milp_binaries"] = result.num_binaries
    stats["milp_rows"] = result.num_rows
    stats["milp_last_status"] = result.status


def _milp_least_peak(
    pool: _Pool, references: list[CutResult], deadline: _Deadline, stats: dict[str, Any]
) -> None:
    """Least simulated peak over MILP solves, each re-linearised around the previous answer.

    Minimising the modelled peak steers towards wherever the model underestimates; re-linearising
    around the answer makes the model exact there, so the next solve cannot exploit the same error.
    """
    for start in references:
        reference: Iterable[fx.Node] = start.saved
        for _ in range(MAX_SOLVES_PER_REFERENCE):
            if deadline.left() <= 0:
                return
            built = build_problem(pool.analysis, pool.costs, reference)
            result = solve_budget(
                built.problem, minimise="peak", time_limit=deadline.slice(), node_limit=MILP_NODE_LIMIT
            )
            _count(stats, result)
            if result.saved is None:
                break
            cut = complete_saved(pool.analysis, (built.nodes[i] for i in result.saved))
            known = cut.saved in pool.plans
            candidate = pool.add(cut, "milp", result.gap)
            log.debug(
                "autoremat: least-peak MILP %s: model peak=%s simulated=%d",
                result.status,
                result.peak_bytes,
                candidate.peak,
            )
            if known or (result.peak_bytes or 0) >= candidate.peak:
                break  # converged, or the model was exact or pessimistic here
            reference = cut.saved


def _milp_to_target(
    pool: _Pool, references: list[CutResult], target: int, deadline: _Deadline, stats: dict[str, Any]
) -> None:
    """MILP proposals for the target: per reference, lower the cap by the model's shortfall until the
    simulation accepts the proposal (the model's error is similar for neighbouring plans)."""
    for start in references:
        built = build_problem(pool.analysis, pool.costs, start.saved)
        cap = target
        for _ in range(MAX_SOLVES_PER_REFERENCE):
            if deadline.left() <= 0:
                return
            result = solve_budget(
                built.problem, cap_bytes=cap, time_limit=deadline.slice(), node_limit=MILP_NODE_LIMIT
            )
            _count(stats, result)
            if result.saved is None:
                log.debug("autoremat: MILP %s at cap=%d", result.status, cap)
                break
            cut = complete_saved(pool.analysis, (built.nodes[i] for i in result.saved))
            candidate = pool.add(cut, "milp", result.gap)
            log.debug(
                "autoremat: MILP %s cap=%d model peak=%s simulated=%d target=%d time=%.3g s",
                result.status,
                cap,
                result.peak_bytes,
                candidate.peak,
                target,
                candidate.time_s,
            )
            if candidate.peak <= target:
                break
            cap -= candidate.peak - target + int(target * CAP_MARGIN)
            if cap <= 0:
                break
