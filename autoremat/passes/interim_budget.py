"""Interim budgeted solver: release the cheapest expensive ops to recompute until the budget holds.

This is the documented stop-gap until the exact MILP budget solver lands. It is built only from the
min-cut, so it inherits its correctness guarantees:

1. ``high`` = the runtime-optimal cut (only cheap ops recomputed); ``low`` = the least-memory cut
   (every op that is correct to recompute may be, matmuls included).
2. The target is ``low + b·(high − low)`` activation bytes for a fraction ``b`` (torch's meaning), or
   the byte cap for an absolute budget (today a cap on *saved* bytes; the peak model comes later).
3. Candidates are the forward ops only ``low`` may recompute, ordered cheapest first (the cost model's
   standalone time, then graph order for determinism). Releasing more candidates can only lower the
   minimum cut, so a bisection finds the fewest releases whose cut meets the target in O(log n) cuts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx

from autoremat.passes.analysis import JointGraphAnalysis
from autoremat.passes.mincut import CutResult, RecomputeRules, released, solve_min_cut
from autoremat.passes.op_classes import RECOMPUTABLE


@dataclass(frozen=True)
class BudgetOutcome:
    cut: CutResult
    target_bytes: int
    low_bytes: int
    high_bytes: int
    released: int
    feasible: bool


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


def solve_to_target(
    analysis: JointGraphAnalysis,
    *,
    fraction: float | None = None,
    cap_bytes: int | None = None,
    base: RecomputeRules,
    cost_s: Callable[[fx.Node], float],
    high: CutResult | None = None,
) -> BudgetOutcome:
    """Cut meeting a fractional budget or a byte cap (exactly one of them).

    ``base`` are the runtime-optimal rules; ``cost_s`` ranks the expensive ops (predicted seconds).
    """
    if (fraction is None) == (cap_bytes is None):
        raise ValueError("solve_to_target needs exactly one of fraction and cap_bytes")
    relaxed = RecomputeRules(classes=RECOMPUTABLE | base.classes, extra=base.extra)
    high = high or solve_min_cut(analysis, base)
    low = solve_min_cut(analysis, relaxed)
    high_b, low_b = high.storage_bytes(analysis), low.storage_bytes(analysis)
    if fraction is not None:
        target = int(low_b + fraction * max(high_b - low_b, 0))
    else:
        target = int(cap_bytes)
    if high_b <= target:
        return BudgetOutcome(high, target, low_b, high_b, 0, True)
    if low_b > target:
        return BudgetOutcome(low, target, low_b, high_b, -1, False)

    candidates = _candidates(analysis, base, relaxed, cost_s)
    # Releasing every candidate is exactly the `low` cut, so it seeds the bisection.
    lo, hi, best = 0, len(candidates), low
    while lo < hi:  # invariant: releasing `hi` candidates meets the target
        mid = (lo + hi) // 2
        cut = solve_min_cut(analysis, released(candidates[:mid], base))
        if cut.storage_bytes(analysis) <= target:
            hi, best = mid, cut
        else:
            lo = mid + 1
    return BudgetOutcome(best, target, low_b, high_b, hi, True)
