"""Greedy budgeted solver: release the cheapest expensive ops to recompute until the budget holds.

The fallback when the exact MILP fails or finds nothing in its time limit (and the solver a user picks
with ``solver="greedy"``). It is built only from the min-cut, so it inherits its correctness:

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

import torch.fx as fx

from autoremat.passes.analysis import JointGraphAnalysis
from autoremat.passes.mincut import CutResult, RecomputeRules, released, solve_min_cut
from autoremat.passes.op_classes import RECOMPUTABLE


@dataclass(frozen=True)
class GreedyOutcome:
    cut: CutResult
    #: ``measure`` of the chosen cut
    bytes: int


def least_memory_rules(base: RecomputeRules) -> RecomputeRules:
    """Rules allowing every op that is correct to recompute: the least-memory end of the range."""
    return RecomputeRules(classes=RECOMPUTABLE | base.classes, extra=base.extra)


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
