"""Greedy budgeted solver: release the cheapest expensive ops to recompute until the budget holds.

The fallback when another solver fails or finds nothing better within its limit (and the solver a user
picks with ``solver="greedy"``). It is built only from the min-cut, so it inherits its correctness:

1. ``high`` = the runtime-optimal cut (only cheap ops recomputed); ``low`` = the least-memory cut
   (every op that is correct to recompute may be, matmuls included).
2. Candidates are the forward ops only ``low`` may recompute, ordered cheapest first (the cost model's
   standalone time, then graph order for determinism).
3. A bisection finds the fewest releases whose cut's memory (``measure``: the predicted peak) meets the
   target, in O(log n) cuts. Releasing more candidates can only lower the saved bytes of the minimum
   cut; the peak usually follows, and the caller checks the answer against the target anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.fx as fx

from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.cut import CutResult, RecomputeRules, least_memory_rules, released
from autoremat.passes.mincut import solve_min_cut

if TYPE_CHECKING:
    from autoremat.passes.solver import SearchContext

#: release prefixes simulated while exploring: cheap plans between the two min-cut extremes
SWEEP_POINTS = 6


@dataclass(frozen=True)
class GreedyOutcome:
    cut: CutResult
    #: ``measure`` of the chosen cut
    bytes: int


def _candidates(
    analysis: JointGraphAnalysis,
    base: RecomputeRules,
    relaxed: RecomputeRules,
    cost_s: Callable[[fx.Node], float],
) -> list[fx.Node]:
    nodes = [
        n
        for n in analysis.facts
        if analysis.is_forward(n) and relaxed.allows(analysis, n) and not base.allows(analysis, n)
    ]
    return sorted(nodes, key=lambda n: (cost_s(n), analysis.order[n]))


def greedy_to_target(
    analysis: JointGraphAnalysis,
    *,
    target_bytes: int,
    base: RecomputeRules,
    cost_s: Callable[[fx.Node], float],
    measure: Callable[[CutResult], int],
    high: CutResult | None = None,
    low: CutResult | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> GreedyOutcome:
    """Fewest cheapest releases whose cut has ``measure(cut) <= target_bytes`` (or the least-memory
    cut when none does; the caller compares ``bytes`` with the target). ``high``/``low`` are the
    runtime-optimal and least-bytes cuts when the caller already has them. When ``keep_going()`` turns
    false the bisection stops with the best cut meeting the target so far."""
    relaxed = least_memory_rules(base)
    high = high or solve_min_cut(analysis, base)
    high_bytes = measure(high)
    if high_bytes <= target_bytes:
        return GreedyOutcome(high, high_bytes)
    low = low or solve_min_cut(analysis, relaxed)
    low_bytes = measure(low)
    candidates = _candidates(analysis, base, relaxed, cost_s)
    if low_bytes > target_bytes:
        return GreedyOutcome(low, low_bytes)
    # Releasing every candidate is exactly the `low` cut, so it seeds the bisection.
    lo, hi, best, best_bytes = 0, len(candidates), low, low_bytes
    while lo < hi and keep_going():  # invariant: releasing `hi` candidates meets the target
        mid = (lo + hi) // 2
        cut = solve_min_cut(analysis, released(candidates[:mid], base))
        nbytes = measure(cut)
        if nbytes <= target_bytes:
            hi, best, best_bytes = mid, cut, nbytes
        else:
            lo = mid + 1
    return GreedyOutcome(best, best_bytes)


def greedy_sweep(
    analysis: JointGraphAnalysis,
    *,
    base: RecomputeRules,
    cost_s: Callable[[fx.Node], float],
    points: int,
    keep_going: Callable[[], bool] = lambda: True,
) -> list[CutResult]:
    """Cuts releasing evenly spaced prefixes of the candidate ranking: a coarse time/memory curve
    between the runtime-optimal and least-bytes cuts (while ``keep_going()`` says there is time)."""
    candidates = _candidates(analysis, base, least_memory_rules(base), cost_s)
    cuts = []
    for k in range(1, points + 1):
        if not keep_going():
            break
        count = round(k * len(candidates) / (points + 1))
        cuts.append(solve_min_cut(analysis, released(candidates[:count], base)))
    return cuts


class GreedySolver:
    """Greedy releases as a search solver: a coarse sweep of ``SWEEP_POINTS`` cuts while exploring,
    a bisection to each cap. Both are bounded by the number of cuts, not by the clock, so their plans
    do not depend on the machine's speed (the time limit only stops a pathological graph)."""

    name = "greedy"

    def __init__(self) -> None:
        self._sweep: list[CutResult] | None = None

    def prepare(self, ctx: SearchContext) -> None:
        """Cut the sweep now, pool it when asked to explore: the cuts read the graph and its costs
        only, so the search makes them while a solve of its own runs (``search._prepare``), and the
        pool sees them in the same order as ever."""
        deadline = ctx.deadline
        self._sweep = greedy_sweep(
            ctx.analysis,
            base=ctx.base,
            cost_s=ctx.costs.standalone_s,
            points=SWEEP_POINTS,
            keep_going=lambda: deadline.left() > 0,  # a safety net: the sweep is SWEEP_POINTS cuts
        )

    def explore(self, ctx: SearchContext) -> None:
        if self._sweep is None:
            self.prepare(ctx)
        for cut in self._sweep or ():
            ctx.pool.add(cut, self.name)

    def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
        outcome = greedy_to_target(
            ctx.analysis,
            target_bytes=cap_bytes,
            base=ctx.base,
            cost_s=ctx.costs.standalone_s,
            measure=lambda cut: ctx.pool.add(cut, self.name).peak,
            high=ctx.high,
            low=ctx.low,
            keep_going=lambda: ctx.deadline.left() > 0,
        )
        ctx.pool.add(outcome.cut, self.name)
