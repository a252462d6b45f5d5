"""The budget that holds: the plan with the least predicted recompute time whose predicted peak (the
memory model's, docs/architecture.md "Memory") is within the user's budget.

Budget semantics, on the peak of the step with graph inputs excluded:

- a fraction ``b``: ``least + b·(runtime_optimal − least)``, where ``runtime_optimal`` is the peak of
  the min-cut plan and ``least`` the lowest peak found;
- bytes: a cap on the predicted peak; below ``least`` the least-memory plan is used and the result is
  marked infeasible (the caller warns, or raises in strict mode).

The search: the runtime-optimal cut first (done if it fits); then every solver explores (the min-cut's
least-bytes cut, greedy's sweep, the chosen solver's own least-peak search); the target is fixed; the
chosen solver proposes plans for the target and for a grid of tighter budgets (a plan that fits a
tighter budget fits a looser one too, so with them in the pool a looser budget never picks a plan
slower than a tighter budget picks); if it failed or found nothing faster than the others, the
fallback solver proposes for the target. The answer is the fastest pooled plan within the target, so
the predicted peak never exceeds a feasible target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoremat.cost_models import GraphCosts
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.cut import CutResult, RecomputeRules, least_memory_rules
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.pool import Candidate, MemoryModel, Pool
from autoremat.passes.registry import BASELINE, FALLBACK, SOLVERS
from autoremat.passes.solver import Deadline, SearchContext, Solver

log = logging.getLogger("autoremat")

#: budget fractions also solved for when they are tighter than the user's (see the module docstring)
GRID_FRACTIONS = (0.75, 0.5, 0.25, 0.1)
#: a plan is called optimal when its solver proved it within this relative gap (HiGHS' stopping gap)
OPTIMAL_GAP = 0.01


@dataclass(frozen=True)
class BudgetTarget:
    """Exactly one of a budget fraction in [0, 1] and a byte cap on the predicted peak."""

    fraction: float | None = None
    cap_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.cap_bytes is None):
            raise ValueError("a budget target needs exactly one of fraction and cap_bytes")

    @property
    def is_runtime_optimal(self) -> bool:
        return self.fraction is not None and self.fraction >= 1.0


@dataclass
class SolveResult:
    """What solving hands to plan building: the chosen cut and everything a report says about it."""

    cut: CutResult
    runtime_optimal: CutResult
    solver: str
    #: "optimal" (proven for its objective) | "within-budget" (feasible, optimality unknown) |
    #: "budget-infeasible" (target below the least peak: the least-peak plan)
    status: str
    gap: float | None
    predicted_peak_bytes: int
    #: the peaks the budget was interpolated between, and the target it resolved to (None when the
    #: runtime-optimal plan was asked for, which needs no search)
    target_bytes: int | None = None
    least_bytes: int | None = None
    runtime_optimal_bytes: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.status != "budget-infeasible"


def solve(
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    memory: MemoryModel,
    target: BudgetTarget,
    *,
    base: RecomputeRules,
    high: CutResult,
    time_limit: float = 10.0,
    solver: str = "milp",
    deterministic: bool = False,
) -> SolveResult:
    """Plan for ``target``; ``high`` is the runtime-optimal cut under ``base``. ``deterministic``
    stops consulting the clock at all, for when several ranks must agree."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid: expected one of {tuple(SOLVERS)}")
    if target.is_runtime_optimal:
        peak = memory.peak(analysis, high.saved).peak_bytes
        return SolveResult(high, high, BASELINE.name, "optimal", 0.0, peak)
    deadline = Deadline(time_limit, deterministic)
    started = time.perf_counter()
    pool = Pool(analysis, costs, memory)
    ctx = SearchContext(analysis, costs, base, high, high, pool, deadline)
    result = _search(ctx, target, SOLVERS[solver]())
    result.stats["solve_seconds"] = time.perf_counter() - started
    if deadline.left() <= 0:
        result.notes.append(
            f"solver time limit ({time_limit:g} s) reached: the plan is the best found so far and may "
            "differ between runs; raise solver_time_limit for a reproducible plan"
        )
        log.info("autoremat: %s", result.notes[-1])
    return result


def _search(ctx: SearchContext, target: BudgetTarget, chosen: Solver) -> SolveResult:
    """The search of the module docstring; ``solve`` validates and reports."""
    runtime_optimal = ctx.pool.add(ctx.high, BASELINE.name)
    if target.cap_bytes is not None and runtime_optimal.peak <= target.cap_bytes:
        return _result(ctx, runtime_optimal, target.cap_bytes, runtime_optimal, runtime_optimal)

    ctx.low = solve_min_cut(ctx.analysis, least_memory_rules(ctx.base))
    healthy = {}
    for solver in _unique([BASELINE(), FALLBACK(), chosen]):
        healthy[solver.name] = _guard(ctx, solver, "explore", solver.explore)
    least = ctx.least = ctx.pool.least()
    if target.fraction is not None:
        cap = int(least.peak + target.fraction * (runtime_optimal.peak - least.peak))
    else:
        cap = int(target.cap_bytes)
    if runtime_optimal.peak <= cap:
        return _result(ctx, runtime_optimal, cap, least, runtime_optimal)
    if least.peak > cap:
        result = _result(ctx, least, cap, least, runtime_optimal)
        result.status = "budget-infeasible"
        return result

    span = runtime_optimal.peak - least.peak
    caps = [cap] + [int(least.peak + f * span) for f in GRID_FRACTIONS if least.peak + f * span < cap]
    for each in caps:
        if not healthy[chosen.name]:
            break
        healthy[chosen.name] = _guard(ctx, chosen, "budget", lambda c, each=each: chosen.propose(c, each))
    best = ctx.pool.fastest_within(cap)
    if chosen.name != FALLBACK.name and (
        not healthy[chosen.name] or best is None or best.source != chosen.name
    ):
        why = "ran out of time" if ctx.deadline.left() <= 0 else "found no faster plan within the target"
        ctx.notes.append(f"{chosen.name} {why} (limit {ctx.deadline.total:g} s); tried {FALLBACK.name} too")
        log.info("autoremat: %s", ctx.notes[-1])
        fallback = FALLBACK()
        _guard(ctx, fallback, "budget", lambda c: fallback.propose(c, cap))
        best = ctx.pool.fastest_within(cap)
    assert best is not None  # `least` fits the target
    return _result(ctx, best, cap, ctx.pool.least(), runtime_optimal)


def _unique(solvers: list[Solver]) -> list[Solver]:
    seen: dict[str, Solver] = {}
    for solver in solvers:
        seen.setdefault(solver.name, solver)
    return list(seen.values())


def _guard(ctx: SearchContext, solver: Solver, what: str, run: Callable[[SearchContext], None]) -> bool:
    """Run one solver stage; a failure is logged and noted, and the other solvers' plans stand."""
    try:
        run(ctx)
    except Exception as exc:  # noqa: BLE001 - a solver failure degrades to the other solvers' plans
        ctx.notes.append(
            f"{solver.name} {what} failed ({type(exc).__name__}: {exc}); using the other solvers' plans"
        )
        log.warning("autoremat: %s", ctx.notes[-1])
        return False
    return True


def _result(
    ctx: SearchContext, best: Candidate, target: int, least: Candidate, runtime_optimal: Candidate
) -> SolveResult:
    if best is runtime_optimal:
        status, gap = "optimal", 0.0
    elif best.gap is not None:
        status, gap = ("optimal" if best.gap <= OPTIMAL_GAP else "within-budget"), best.gap
    else:
        status, gap = "within-budget", None
    return SolveResult(
        cut=best.cut,
        runtime_optimal=runtime_optimal.cut,
        solver=best.source,
        status=status,
        gap=gap,
        predicted_peak_bytes=best.peak,
        target_bytes=target,
        least_bytes=least.peak,
        runtime_optimal_bytes=runtime_optimal.peak,
        stats=ctx.stats,
        notes=ctx.notes,
    )
