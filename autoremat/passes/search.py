"""The budget that holds: the plan with the least predicted recompute time whose predicted peak is
within the user's budget. Solvers plan with the memory model (docs/architecture.md "Memory"); when the
step is compiled by Inductor, the search resolves the budget and picks the plan on peaks checked
against Inductor's own schedule (``inductor_check.py``), and "predicted peak" means the checked one.

Budget semantics, on the peak of the step with graph inputs excluded:

- a fraction ``b``: ``least + b·(runtime_optimal − least)``, where ``runtime_optimal`` is the peak of
  the min-cut plan and ``least`` the lowest peak found;
- bytes: a cap on the predicted peak; below ``least`` the least-memory plan is used and the result is
  marked infeasible (the caller warns, or raises in strict mode).

The search: the runtime-optimal cut first (done if it fits); then every solver explores (the min-cut's
least-bytes cut, greedy's sweep, the plans of torch's own budget knob, the chosen solver's own
least-peak search); the target is fixed; the
chosen solver proposes plans for the target and for a grid of tighter budgets (a plan that fits a
tighter budget fits a looser one too, so with them in the pool a looser budget never picks a plan
slower than a tighter budget picks); if it failed or found nothing faster than the others, the
fallback solver proposes for the target. The answer is the fastest pooled plan within the target, so
the predicted peak never exceeds a feasible target. With a check, the least-peak and runtime-optimal
plans are checked first (they set the scale a fraction is read on, and a byte cap is translated to the
model's scale through them); the solvers propose for the translated cap, and the fastest finalists are
checked in order until one fits the target. When faster plans were checked and missed while the plan
that fits leaves part of the target unused, the cap is corrected by a missed plan's own checked/model
ratio and the solvers propose again (``_Checked.recalibrated_cap``, at most ``RECALIBRATIONS`` times).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from autoremat.cost_models import GraphCosts
from autoremat.graph.analysis import JointGraphAnalysis, stable_node_keys
from autoremat.passes.cut import CutResult, RecomputeRules, least_memory_rules
from autoremat.passes.milp import within_gap
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.pool import Candidate, MemoryModel, Pool, complete_saved
from autoremat.passes.registry import BASELINE, EXPLORERS, FALLBACK, SOLVERS
from autoremat.passes.solver import Deadline, JointGraph, SearchContext, Solver, StageClock
from autoremat.passes.step_allocation import StepOption, frontier

log = logging.getLogger("autoremat")

#: budget fractions also solved for when they are tighter than the user's (see the module docstring)
GRID_FRACTIONS = (0.75, 0.5, 0.25, 0.1)


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
    #: the target the budget resolved to, the least peak found (the plan a fraction is read from,
    #: or the chosen plan where that checks lower) and the runtime-optimal plan's peak (None when
    #: the runtime-optimal plan was asked for, which needs no search)
    target_bytes: int | None = None
    least_bytes: int | None = None
    runtime_optimal_bytes: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the plans considered that no other beats on end-of-forward bytes, peak and time: what this
    #: graph offers a whole-step budget (``step_allocation.py``)
    frontier: list[StepOption] = field(default_factory=list)
    #: the checked peak of a frontier option (None where there is no check): a whole-step budget
    #: checks the options it chooses, as the search checks its finalists
    check_option: Callable[[StepOption], StepOption | None] | None = None

    @property
    def feasible(self) -> bool:
        return self.status != "budget-infeasible"


class PeakCheck(Protocol):
    """A second, costlier opinion on a plan's peak: the schedule the compiled step really runs
    (``inductor_check.InductorCheck``). Computed once per plan; may raise."""

    name: str

    def peak(self, candidate: Candidate) -> int: ...

    def known(self, candidate: Candidate) -> int | None: ...

    def confirm(self, candidate: Candidate) -> int:
        """``peak`` with nothing estimated, for a plan about to be chosen."""
        ...

    # optional: ``prefetch(candidate)`` starts measuring a plan the search will ask about after a
    # solve, and ``drain()`` waits for that (``inductor_check.py``); a check without them is asked
    # in turn


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
    check: PeakCheck | None = None,
    joint: JointGraph | None = None,
    clock: StageClock,
) -> SolveResult:
    """Plan for ``target``; ``high`` is the runtime-optimal cut under ``base``. ``deterministic``
    stops consulting the clock at all, for when several ranks must agree. With ``check``, the budget
    is resolved and the plan picked on checked peaks (see ``_Checked``). The search's stages are
    timed on ``clock``, the partitioner's, which reports them with its own."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid: expected one of {tuple(SOLVERS)}")
    deadline = Deadline(time_limit, deterministic)
    started = time.perf_counter()
    pool = Pool(analysis, costs, memory)
    ctx = SearchContext(analysis, costs, base, high, high, pool, deadline, joint=joint, clock=clock)
    checked = _Checked(ctx, check)
    chosen = SOLVERS[solver]()
    with ctx.clock.stage("search"):
        try:
            result = _solve(ctx, target, chosen, checked)
        finally:
            _ask_ahead(ctx, chosen, "close")  # no solve outlives the search (never raises)
            # no measurement may outlive the search: the compile that follows patches Inductor's config
            checked.drain()
        # what predicted_peak_bytes and the budget's scale are in: the memory model's peaks, or the
        # check's ("inductor-plan") when plans were checked against Inductor's schedule
        result.stats["peak_model"] = checked.model_name
        result.stats.update(checked.stats())
        result.frontier = frontier(checked.step_option(c) for c in pool.plans.values())
    result.stats["solve_seconds"] = time.perf_counter() - started
    if checked.check is not None:
        result.check_option = lambda option: checked.check_option(option)
    if deadline.left() <= 0:
        result.notes.append(
            f"solver time limit ({time_limit:g} s) reached: the plan is the best found so far and may "
            "differ between runs; raise solver_time_limit for a reproducible plan"
        )
        log.info("autoremat: %s", result.notes[-1])
    return result


def _solve(ctx: SearchContext, target: BudgetTarget, chosen: Solver, checked: _Checked) -> SolveResult:
    if target.is_runtime_optimal:
        runtime_optimal = _runtime_optimal(ctx, chosen, checked)
        status, gap = _status(runtime_optimal, runtime_optimal)
        return SolveResult(
            runtime_optimal.cut,
            runtime_optimal.cut,
            runtime_optimal.source,
            status,
            gap,
            checked.peak(runtime_optimal),
            notes=ctx.notes,
        )
    return _search(ctx, target, chosen, checked)


#: the most plans beyond the runtime-optimal and least-peak ones that one search checks for the
#: target (each correction round, ``RECALIBRATIONS``, may check as many again)
MAX_FINALIST_CHECKS = 3
#: the lowest-peak plans checked for the least one (see ``_Checked.scale``)
LEAST_CHECKS = 2
#: a finalist whose checked peak is estimated above the target by more than this factor is not checked
ESTIMATE_SLACK = 1.0
#: the most times the solvers propose again for a model cap corrected by the checked plans that
#: missed the target (see ``_Checked.recalibrated_cap``)
RECALIBRATIONS = 2
#: ... when the chosen plan leaves more than this share of the budget's scale unused
RECALIBRATE_HEADROOM = 0.02


class _Checked:
    """Peaks as the check sees them, degrading to the memory model's when there is no check or it
    fails (the failure is noted once, and the search goes on with the model's peaks).

    The budget's scale comes from checking the runtime-optimal and least-peak plans; between them a
    linear map from model peaks to checked peaks decides which finalists are worth checking and
    translates a checked cap into the cap the solvers propose for."""

    def __init__(self, ctx: SearchContext, check: PeakCheck | None) -> None:
        self.ctx, self.check, self._given = ctx, check, check
        self.anchors: tuple[Candidate, Candidate] | None = None
        self._keys: dict[Any, str] | None = None

    @property
    def model_name(self) -> str:
        return self.check.name if self.check is not None else self.ctx.pool.memory.name

    def stats(self) -> dict[str, Any]:
        if self._given is None:
            return {}
        return {
            "checked_plans": getattr(self._given, "checks", None),
            "check_seconds": getattr(self._given, "seconds", None),
            "check_wait_seconds": getattr(self._given, "wait_seconds", None),
            "check_prefetched": getattr(self._given, "prefetches", None),
            "check_prefetches_used": getattr(self._given, "prefetches_used", None),
            "check_forward_replays": getattr(self._given, "forward_replays", None),
            "check_failed": self.check is None,
        }

    def prefetch(self, candidate: Candidate | None) -> None:
        """Let the check measure ``candidate`` during the solve the search runs next (when the check
        can: ``InductorCheck.prefetch``); what the search learns stays the same. Only a speed-up: a
        measurement that cannot start is left to the check when asked."""
        prefetch = getattr(self.check, "prefetch", None)
        if candidate is None or prefetch is None:
            return
        try:
            prefetch(candidate)
        except Exception as exc:  # noqa: BLE001 - the check, asked in turn, decides what it means
            log.debug("autoremat: could not measure a plan ahead (%s: %s)", type(exc).__name__, exc)

    def drain(self) -> None:
        """Wait for the check's measurements in flight (before anything but a solve runs). The wait
        is a check's time, which the search's time limit does not count (``_ask``)."""
        drain = getattr(self._given, "drain", None)
        if drain is not None:
            with self.ctx.deadline.paused(), self.ctx.clock.stage("check"):
                drain()

    def peak(self, candidate: Candidate) -> int:
        return self._ask(candidate, confirm=False)

    def confirmed(self, candidate: Candidate) -> int:
        """The checked peak of a plan about to be chosen, with nothing in it estimated (a check may
        estimate a forward's peak to spare a replay: ``InductorCheck.confirm``)."""
        return self._ask(candidate, confirm=True)

    def fits(self, candidate: Candidate, cap: int) -> bool:
        """Whether ``candidate`` fits ``cap`` by its checked peak and then by its confirmation (a
        plan that misses on the first is never confirmed: a confirmation may cost a replay)."""
        return self.peak(candidate) <= cap and self.confirmed(candidate) <= cap

    def _ask(self, candidate: Candidate, *, confirm: bool) -> int:
        if self.check is None:
            return candidate.peak
        try:
            with self.ctx.deadline.paused(), self.ctx.clock.stage("check"):
                return self.check.confirm(candidate) if confirm else self.check.peak(candidate)
        except Exception as exc:  # noqa: BLE001 - a failed check degrades to the model's peaks
            self._give_up(exc)
            return candidate.peak

    def _give_up(self, exc: Exception) -> None:
        self.ctx.notes.append(
            f"checking plans against Inductor's schedule failed ({type(exc).__name__}: {exc}); "
            "planning with the op-by-op memory model alone"
        )
        log.warning("autoremat: %s", self.ctx.notes[-1])
        self.check = None

    def scale(self, runtime_optimal: Candidate) -> tuple[Candidate, int, int]:
        """The least plan and the checked peaks of the two plans a fraction is interpolated between
        (both in one unit). The least plan is the lowest checked of the pool's ``LEAST_CHECKS``
        lowest-peak plans: the model's least-peak plan is often not the lowest under Inductor (on
        llama it peaked 10% above the next one), and reading budget 0 on it would make a tighter
        budget peak higher than a looser one. A further plan is checked only when it could be lower:
        when its model peak at the most favourable ratio of checked to model peak seen so far is
        below the lowest checked peak (on gpt2 the second-lowest plan's model peak was 13% above the
        least's, and it stayed above it under Inductor)."""
        lows = _lowest_first(self.ctx.pool)
        high = self.peak(runtime_optimal)
        if self.check is None:
            return lows[0], runtime_optimal.peak, lows[0].peak
        best, best_peak = lows[0], self.peak(lows[0])
        for candidate in lows[1:LEAST_CHECKS]:
            if self.check is None:
                break
            ratio = min(self._ratio(runtime_optimal), self._ratio(best))
            if candidate.peak * ratio >= best_peak:
                continue
            peak = self.peak(candidate)
            if peak < best_peak or (peak == best_peak and candidate.time_s < best.time_s):
                best, best_peak = candidate, peak
        if self.check is None:  # failed on the way: the model's peaks for all
            return lows[0], runtime_optimal.peak, lows[0].peak
        self.anchors = (best, runtime_optimal)
        return best, high, best_peak

    def _ratio(self, candidate: Candidate) -> float:
        """Checked peak over model peak of a checked plan."""
        known = self.check.known(candidate) if self.check is not None else None
        return known / candidate.peak if known is not None and candidate.peak else 1.0

    def step_option(self, candidate: Candidate) -> StepOption:
        """``candidate`` as a whole-step budget sees it: its checked peaks where it was checked (the
        forward's and the backward's apart), else the estimate from the checked plans for both, or
        the model's peaks without a check."""
        if self._keys is None:
            self._keys = stable_node_keys(self.ctx.analysis.graph)
        names = tuple(self._keys[n] for n in candidate.cut.saved)
        known = self.check.known(candidate) if self.check is not None else None
        if known is not None:
            phases = getattr(self.check, "phases", lambda c: None)(candidate) or (known, known)
        elif self.check is not None:
            phases = (round(self.estimate(candidate.peak)),) * 2
        else:
            phases = (candidate.forward_peak, candidate.backward_peak)
        forward, backward = (int(p) for p in phases)
        return StepOption(
            names,
            candidate.end_bytes,
            max(forward, backward),
            candidate.time_s,
            known is not None,
            forward,
            backward,
            self._releasable(candidate) if self.check is None else 0,
        )

    def _releasable(self, candidate: Candidate) -> int:
        """Bytes of the forward's outputs that ``candidate`` does not save (storages once). Only on
        the codegen-free path: under Inductor a block's output stayed live through its backward
        (with it released, per-block step peaks measured 1.2-1.9% above their prediction)."""
        facts = self.ctx.analysis.facts
        saved = {facts[n].storage_base for n in candidate.cut.saved if n in facts}
        bases = {facts[n].storage_base for n in self.ctx.analysis.fwd_outputs if n in facts}
        return sum(facts[b].save_bytes for b in bases - saved if b in facts)

    def check_option(self, option: StepOption) -> StepOption | None:
        """``option`` with the checked peaks of the pooled plan it stands for (None without a
        check, or when the check fails)."""
        for candidate in self.ctx.pool.plans.values():
            if self.check is not None and self.step_option(candidate).saved == option.saved:
                self.peak(candidate)
                return self.step_option(candidate) if self.check is not None else None
        return None

    def estimate(self, model_peak: int) -> float:
        """The checked peak a plan of ``model_peak`` is expected to have (linear between anchors)."""
        if self.check is None or self.anchors is None:
            return float(model_peak)
        low, high = self.anchors
        low_c, high_c = self.check.known(low), self.check.known(high)
        if low_c is None or high_c is None or high.peak == low.peak:
            return float(model_peak - low.peak + (low_c or low.peak))
        return low_c + (model_peak - low.peak) * (high_c - low_c) / (high.peak - low.peak)

    def model_cap(self, cap: int) -> int:
        """The model-peak cap expected to give checked peaks within ``cap`` (inverse of estimate)."""
        if self.check is None or self.anchors is None:
            return cap
        low, high = self.anchors
        low_c, high_c = self.check.known(low), self.check.known(high)
        if low_c is None or high_c is None or high_c == low_c:
            return cap - (low_c or low.peak) + low.peak
        return int(low.peak + (cap - low_c) * (high.peak - low.peak) / (high_c - low_c))

    def fastest_within(self, cap: int, model_cap: int) -> Candidate | None:
        """The fastest plan whose checked peak is within ``cap``: finalists (the pool's time/peak
        frontier) are checked fastest first, skipping those that cannot fit even at the most
        favourable ratio of checked to model peak of the two anchors (the linear estimate between
        them is rough: on gpt2 at 0.25 it put the plan that fits 1.5% over the cap), until one fits
        or the checks run out; then the fastest checked plan that fits. (A plan within the
        translated cap, or a corrected one below it, ``recalibrated_cap``, always passes that test:
        between the anchors the line's checked/model ratio is at least the lesser anchor's.)"""
        if self.check is None:
            return self.ctx.pool.fastest_within(model_cap)
        budget = MAX_FINALIST_CHECKS
        for candidate in _frontier(self.ctx.pool.plans.values()):
            if self.check is not None and self.check.known(candidate) is None:
                if budget == 0 or not self._may_fit(candidate, cap):
                    continue
                budget -= 1
            if self.fits(candidate, cap):
                return candidate
            if self.check is None:
                return self.ctx.pool.fastest_within(model_cap)
        fitting = [c for c in self.ctx.pool.plans.values() if _within(self.check.known(c), cap)]
        for candidate in sorted(fitting, key=lambda c: (c.time_s, c.peak)):
            if self.fits(candidate, cap):
                return candidate
            if self.check is None:
                return self.ctx.pool.fastest_within(model_cap)
        return None

    def _may_fit(self, candidate: Candidate, cap: int) -> bool:
        """Whether ``candidate`` can fit ``cap`` at the anchors' most favourable checked/model ratio."""
        ratio = min(self._ratio(anchor) for anchor in self.anchors) if self.anchors else 1.0
        return math.floor(candidate.peak * ratio) <= cap * ESTIMATE_SLACK

    def first_finalist(self, cap: int) -> Candidate | None:
        """The plan ``fastest_within(cap)`` would check first if asked now, or None when it first
        reaches a checked plan within ``cap`` (it stops there, unless that plan's confirmation
        misses: a guess is not worth making then)."""
        if self.check is None:
            return None
        for candidate in _frontier(self.ctx.pool.plans.values()):
            known = self.check.known(candidate)
            if known is not None and known <= cap:
                return None
            if known is None and self._may_fit(candidate, cap):
                return candidate
        return None

    def recalibrated_cap(
        self, best: Candidate | None, cap: int, span: int, within: tuple[int, int]
    ) -> int | None:
        """A lower model cap to propose for, or None when proposing again is not worth it.

        The map from model peaks to checked peaks that translated the target is a line through the
        two anchors, but fusion does not shrink every plan alike: on a 12-layer GPT at budget 0.5
        the anchors checked at 0.93-0.95 of their model peaks and the MILP's plans at 0.965, so
        every plan proposed for the translated cap missed the target by 2.6% and the search fell
        back to a greedy plan that left half the budget unused, at 62% more recompute than the
        MILP's codegen-free plan. When the chosen plan (``best``) leaves more than
        ``RECALIBRATE_HEADROOM`` of the scale unused and a faster checked plan missed, the cap is
        that miss's model peak scaled by its own checked-to-model ratio, so the solver's next plans
        are read with their family's ratio, not the anchors'. Of several misses the one of least
        model peak is read: the ratio drifts along the frontier (at budget 0.75 the same model's
        misses checked at 0.945-0.968 of their model peaks), and the lowest is the nearest to where
        the next plans will be, the previous round's proposals. The cap must lie strictly
        ``within`` (the least plan's model peak, the last cap proposed for), so the rounds only go
        down."""
        if self.check is None or best is None:
            return None
        best_peak = self.check.known(best)
        if best_peak is None or cap - best_peak <= RECALIBRATE_HEADROOM * span:
            return None
        misses = [
            (known, c)
            for c in self.ctx.pool.plans.values()
            if c.time_s < best.time_s and (known := self.check.known(c)) is not None and known > cap
        ]
        if not misses:
            return None
        known, miss = min(misses, key=lambda m: (m[1].peak, m[0], m[1].time_s))
        lower = int(miss.peak * cap / known)
        return lower if within[0] < lower < within[1] else None

    def faster_may_fit(self, best: Candidate, cap: int, model_cap: int) -> bool:
        """Whether a pooled plan faster than ``best`` fits the target, or may (unchecked but within
        the model's cap)."""
        for candidate in self.ctx.pool.plans.values():
            if candidate.time_s >= best.time_s:
                continue
            known = self.check.known(candidate) if self.check is not None else None
            if (known is not None and known <= cap) or (known is None and candidate.peak <= model_cap):
                return True
        return False

    def lowest_within(self, cap: int) -> Candidate | None:
        """A plan whose checked peak fits ``cap`` although the least-peak plan's does not: the
        pool's lowest-peak plans are checked, lowest first, within the finalists' allowance."""
        if self.check is None:
            return None
        by_peak = sorted(_frontier(self.ctx.pool.plans.values()), key=lambda c: c.peak)
        unchecked = [c for c in by_peak if self.check.known(c) is None][:MAX_FINALIST_CHECKS]
        for candidate in unchecked:
            if self.fits(candidate, cap):
                return candidate
            if self.check is None:
                return None
        return None


def _within(peak: int | None, cap: int) -> bool:
    return peak is not None and peak <= cap


def _frontier(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The plans no other plan beats on both time and model peak, fastest first."""
    frontier: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.time_s, c.peak)):
        if not frontier or candidate.peak < frontier[-1].peak:
            frontier.append(candidate)
    return frontier


def _lowest_first(pool: Pool) -> list[Candidate]:
    """The pool's time/peak frontier, lowest model peak first: the candidates for the least plan."""
    return sorted(_frontier(pool.plans.values()), key=lambda c: (c.peak, c.time_s))


def _search(ctx: SearchContext, target: BudgetTarget, chosen: Solver, checked: _Checked) -> SolveResult:
    """The search of the module docstring; ``solve`` validates and reports."""
    explorers = _unique([*(explorer() for explorer in EXPLORERS), chosen])
    # a fraction below 1 always searches: what the explorers can do before the budget-1.0 plan is
    # known, they do while its solve runs; a byte cap may be met by that plan (no search)
    prepare = (lambda: _prepare(ctx, chosen, explorers)) if target.fraction is not None else None
    runtime_optimal = _runtime_optimal(ctx, chosen, checked, meanwhile=prepare)
    if target.cap_bytes is not None and checked.fits(runtime_optimal, target.cap_bytes):
        return _result(ctx, checked, runtime_optimal, target.cap_bytes, runtime_optimal, runtime_optimal)

    if prepare is None:
        _prepare(ctx, chosen, explorers=[])
    healthy = {}
    for solver in explorers:
        healthy[solver.name] = _guard(ctx, solver, "explore", solver.explore)
    guessed = _propose_ahead(ctx, target, chosen, checked, runtime_optimal)
    least, high_peak, least_peak = checked.scale(runtime_optimal)
    ctx.least = least
    if target.fraction is not None:
        cap = int(least_peak + target.fraction * (high_peak - least_peak))
    else:
        cap = int(target.cap_bytes)
    if high_peak <= cap:
        return _result(ctx, checked, runtime_optimal, cap, least, runtime_optimal)
    if least_peak > cap:
        # another plan may run lower under the check than the model's least-peak plan does
        lower = checked.lowest_within(cap)
        if lower is not None:
            return _result(ctx, checked, lower, cap, least, runtime_optimal)
        result = _result(ctx, checked, least, cap, least, runtime_optimal)
        result.status = "budget-infeasible"
        return result

    # a fraction: the anchors' line maps it to the same fraction of the model's span; read there,
    # not back from the rounded checked cap, which can lose a byte (and with it a plan that meets
    # the target exactly, 2-layer test transformer at 0.5)
    model_cap = _model_cap(target, least, runtime_optimal, checked.model_cap(cap))
    caps = _caps(least, runtime_optimal, model_cap)
    if guessed is not None and guessed != caps:
        _ask_ahead(ctx, chosen, "forget_ahead")
    earlier = set(ctx.pool.plans)
    for i, each in enumerate(caps):
        if not healthy[chosen.name]:
            break
        ctx.grid = i > 0
        healthy[chosen.name] = _guard(ctx, chosen, "budget", lambda c, each=each: chosen.propose(c, each))
        if i == 0:
            _measure_ahead(ctx, checked, cap, earlier)
    ctx.grid, ctx.before_solve = False, None
    _fall_back_if_needed(ctx, chosen, healthy[chosen.name], model_cap)
    best = checked.fastest_within(cap, model_cap)
    best = _recalibrate(
        ctx, checked, chosen, healthy, best, cap, high_peak - least_peak, (least.peak, model_cap)
    )
    if best is None:  # the check failed after the target was set in its units: the model's least
        best = least
    result = _result(ctx, checked, best, cap, least, runtime_optimal)
    if result.status == "optimal" and checked.faster_may_fit(best, cap, model_cap):
        # the solver's proof holds for its linearised model; a faster pooled plan that fits (or may:
        # it was never checked) shows the plan is not optimal for the budget
        result.status = "within-budget"
    return result


def _model_cap(target: BudgetTarget, least: Candidate, runtime_optimal: Candidate, translated: int) -> int:
    """The model cap proposed for: a fraction of the span between ``least`` and ``runtime_optimal``
    model peaks, or the byte cap ``translated`` to model peaks; within that span."""
    if target.fraction is not None:
        model_cap = int(least.peak + target.fraction * (runtime_optimal.peak - least.peak))
    else:
        model_cap = translated
    return min(max(model_cap, least.peak), runtime_optimal.peak)


def _caps(least: Candidate, runtime_optimal: Candidate, model_cap: int) -> list[int]:
    """The model caps proposed for: the target's, then the grid's tighter ones."""
    span = runtime_optimal.peak - least.peak
    return [model_cap] + [
        int(least.peak + f * span) for f in GRID_FRACTIONS if least.peak + f * span < model_cap
    ]


def _propose_ahead(
    ctx: SearchContext, target: BudgetTarget, chosen: Solver, checked: _Checked, runtime_optimal: Candidate
) -> list[int] | None:
    """Let the chosen solver start the solves it will make for the target and the grid (when it
    can: ``MilpSolver.propose_ahead``) before the budget's scale is read (with a check, while the
    least-peak and runtime-optimal plans are checked for it). The caps are those ``_search``
    computes if the least plan is the model's least-peak plan, as it is without a check and for
    most checks; with a check only a fraction's cap is known before it (a byte cap is translated
    through the checked peaks). The caps guessed, or None."""
    if target.fraction is None and checked.check is not None:
        return None
    lows = _lowest_first(ctx.pool)
    if not lows:
        return None
    least = lows[0]
    model_cap = _model_cap(target, least, runtime_optimal, int(target.cap_bytes or 0))
    if model_cap >= runtime_optimal.peak:
        return None
    caps = _caps(least, runtime_optimal, model_cap)
    _ask_ahead(ctx, chosen, "propose_ahead", ctx, caps, least=least, busy=checked.check is not None)
    return caps


def _ask_ahead(
    ctx: SearchContext, solver: Solver, method: str, *args: Any, stage: str = "ahead", **kwargs: Any
) -> None:
    """Call ``solver``'s optional ``method`` (work started ahead, or its end; timed as "<solver>
    <stage>": building the problems it starts, or waiting for the solve still running at the end);
    work ahead is only a speed-up, so a failure to start it is logged and the search goes on (the
    work is done in turn)."""
    call = getattr(solver, method, None)
    if call is None:
        return
    try:
        with ctx.clock.stage(f"{solver.name} {stage}"):
            call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the same solves, asked in turn, report their own failures
        log.debug("autoremat: %s.%s failed (%s: %s)", solver.name, method, type(exc).__name__, exc)


def _measure_ahead(ctx: SearchContext, checked: _Checked, cap: int, earlier: set[Any]) -> None:
    """Until the grid's proposals end (the caller disarms it), before each solve, let the check
    measure the plan ``fastest_within(cap)`` would check first, if it is one of the target's
    proposals (not among the ``earlier`` plans, which the proposals were there to beat): so during
    the grid's solves, which rarely find a faster plan. Not during the solves for the target itself,
    or a correction round's: a second reference's answer often ties the first's on predicted time
    and peak and wins the tie by a hair (quick llama at 0.5: 57 and 58 values saved, twice), and a
    wrong guess delays the check the search then asks for."""

    def before_solve() -> None:
        candidate = checked.first_finalist(cap)
        if candidate is not None and candidate.cut.saved not in earlier:
            checked.prefetch(candidate)

    ctx.before_solve = before_solve


def _recalibrate(
    ctx: SearchContext,
    checked: _Checked,
    chosen: Solver,
    healthy: dict[str, bool],
    best: Candidate | None,
    cap: int,
    span: int,
    within: tuple[int, int],
) -> Candidate | None:
    """``best`` or a faster plan that fits ``cap`` after at most ``RECALIBRATIONS`` proposals for
    corrected caps (``_Checked.recalibrated_cap``; ``within`` is (least plan's model peak, the
    translated cap))."""
    floor, proposed_for = within
    for _ in range(RECALIBRATIONS):
        lower = checked.recalibrated_cap(best, cap, span, (floor, proposed_for))
        if lower is None or (chosen.name == FALLBACK.name and not healthy[chosen.name]):
            break
        ctx.stats["recalibrations"] = ctx.stats.get("recalibrations", 0) + 1
        log.debug("autoremat: checked plans missed the target; proposing again at model cap %d", lower)
        if healthy[chosen.name]:
            healthy[chosen.name] = _guard(
                ctx, chosen, "budget", lambda c, lower=lower: chosen.propose(c, lower)
            )
        _fall_back_if_needed(ctx, chosen, healthy[chosen.name], lower)
        proposed_for = lower
        found = checked.fastest_within(cap, lower)
        if checked.check is None:  # the check failed: keep the plan it accepted
            break
        # the walk down the frontier can pass a plan that fits and was chosen before (a faster new
        # plan that missed may have pushed it off the frontier): keep the faster of the two
        best = min((c for c in (found, best) if c is not None), key=lambda c: (c.time_s, c.peak))
    return best


def _fall_back_if_needed(ctx: SearchContext, chosen: Solver, healthy: bool, model_cap: int) -> None:
    """The fallback solver proposes for ``model_cap`` too when the chosen one failed or its plans are
    not the fastest within that cap (the MILP's linearised peaks cannot reach some low caps); the
    note says so once."""
    best = ctx.pool.fastest_within(model_cap)
    if chosen.name == FALLBACK.name or (healthy and best is not None and best.source == chosen.name):
        return
    why = "ran out of time" if ctx.deadline.left() <= 0 else "found no faster plan within the target"
    note = f"{chosen.name} {why} (limit {ctx.deadline.total:g} s); tried {FALLBACK.name} too"
    if note not in ctx.notes:
        ctx.notes.append(note)
        log.info("autoremat: %s", note)
    fallback = FALLBACK()
    _guard(ctx, fallback, "budget", lambda c: fallback.propose(c, model_cap))


def _prepare(ctx: SearchContext, chosen: Solver, explorers: list[Solver]) -> None:
    """The explorers' work that needs no plan of the search's: the least-bytes cut, the first
    solves of the chosen solver's exploration (started ahead: ``solves_ahead.py``), and what each
    of ``explorers`` prepares (``GreedySolver.prepare``: its sweep's cuts, which it pools when it
    explores, so the pool is filled in the same order as without it)."""
    with ctx.clock.stage("least-bytes cut"):
        ctx.low = solve_min_cut(ctx.analysis, least_memory_rules(ctx.base))
    _ask_ahead(ctx, chosen, "explore_ahead", ctx)  # while the other explorers run
    for solver in explorers:  # a failure is left to its explore, which does the work and reports
        _ask_ahead(ctx, solver, "prepare", ctx, stage="prepare")


def _runtime_optimal(
    ctx: SearchContext, chosen: Solver, checked: _Checked, meanwhile: Callable[[], None] | None = None
) -> Candidate:
    """The budget-1.0 plan: the min-cut's, unless the chosen solver's ``fastest`` (when it has one:
    the MILP's least recompute time within the min-cut plan's peak) finds a plan that beats it on
    both counts (no more peak, less predicted time). The min-cut minimises its own edge weights,
    not the predicted recompute time: on a 2-block model a 0.75 plan beat its plan on both peak and
    time, and the budget's scale must not top out at a dominated plan. Plans with more peak, or more
    bytes saved at the end of the forward, are not taken, however fast: budget 1.0 keeps the
    min-cut's memory (the cut torch's default partitioner makes)."""
    high = ctx.pool.add(ctx.high, BASELINE.name)
    fastest = getattr(chosen, "fastest", None)
    if fastest is None:
        if meanwhile is not None:
            meanwhile()
        return high
    before = set(ctx.pool.plans)
    # the min-cut plan is the runtime-optimal one unless this solve finds one that dominates it
    # (rare): it is measured while the solve runs, and ``meanwhile`` is done then (with the solve
    # started ahead: at 57 GPT layers its 1.2 s run beside the least-bytes and greedy's cuts)
    checked.prefetch(high)
    if meanwhile is not None:
        _ask_ahead(ctx, chosen, "fastest_ahead", ctx, high.peak)
        meanwhile()
    _guard(ctx, chosen, "fastest", lambda c: fastest(c, high.peak))
    checked.drain()  # the explorers that follow run torch's own partitioner
    found = [
        c
        for key, c in ctx.pool.plans.items()
        if key not in before and c.peak <= high.peak and c.end_bytes <= high.end_bytes
    ]
    return min([high, *found], key=lambda c: (c.time_s, c.peak))


def solve_saved(
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    memory: MemoryModel,
    saved: Iterable[Any],
    *,
    high: CutResult,
    source: str,
) -> SolveResult:
    """The plan that saves exactly ``saved`` (chosen elsewhere, e.g. for a whole-step budget),
    verified and costed like any pooled plan; no search."""
    pool = Pool(analysis, costs, memory)
    chosen = pool.add(complete_saved(analysis, saved), source)
    runtime_optimal = pool.add(high, BASELINE.name)
    result = SolveResult(
        chosen.cut,
        high,
        source,
        "within-budget",
        None,
        chosen.peak,
        runtime_optimal_bytes=runtime_optimal.peak,
    )
    result.stats["peak_model"] = memory.name
    return result


def _unique(solvers: list[Solver]) -> list[Solver]:
    seen: dict[str, Solver] = {}
    for solver in solvers:
        seen.setdefault(solver.name, solver)
    return list(seen.values())


def _guard(ctx: SearchContext, solver: Solver, what: str, run: Callable[[SearchContext], None]) -> bool:
    """Run one solver stage (timed as "<solver> <what>"); a failure is logged and noted, and the
    other solvers' plans stand."""
    try:
        with ctx.clock.stage(f"{solver.name} {what}"):
            run(ctx)
    except Exception as exc:  # noqa: BLE001 - a solver failure degrades to the other solvers' plans
        ctx.notes.append(
            f"{solver.name} {what} failed ({type(exc).__name__}: {exc}); using the other solvers' plans"
        )
        log.warning("autoremat: %s", ctx.notes[-1])
        return False
    return True


def _status(best: Candidate, runtime_optimal: Candidate) -> tuple[str, float | None]:
    """ "optimal" only where proven for its objective: the min-cut's own plan at budget 1.0, or a
    MILP answer proven within HiGHS' stopping gap (``milp.within_gap``; the search may still demote
    it: see ``_search``)."""
    if best is runtime_optimal and best.source == BASELINE.name:
        return "optimal", 0.0
    if best.gap is not None:
        return ("optimal" if within_gap(best.gap) else "within-budget"), best.gap
    return "within-budget", None


def _result(
    ctx: SearchContext,
    checked: _Checked,
    best: Candidate,
    target: int,
    least: Candidate,
    runtime_optimal: Candidate,
) -> SolveResult:
    status, gap = _status(best, runtime_optimal)
    return SolveResult(
        cut=best.cut,
        runtime_optimal=runtime_optimal.cut,
        solver=best.source,
        status=status,
        gap=gap,
        predicted_peak_bytes=checked.peak(best),
        target_bytes=target,
        # the plan chosen can check below the least plan the scale was read on (a proposal that
        # the check ranks lower than the model does): the least found is then its peak
        least_bytes=min(checked.peak(least), checked.peak(best)),
        runtime_optimal_bytes=checked.peak(runtime_optimal),
        stats=ctx.stats,
        notes=ctx.notes,
    )
