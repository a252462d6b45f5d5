"""One plan per compiled graph for a whole training step under one budget (docs/architecture.md,
"Step budget").

A step runs several compiled graphs ("regions"): one per block when blocks are compiled one by one
(and that one graph then runs once per block), or one per piece of a model with graph breaks. While
the backward of region instance ``k`` runs, every instance before it in forward order still holds what
its forward left live (its saved values and outputs), so the step's activation peak is

    max over instances k of  sum_{j < k} end(j) + max(forward(k), backward(k) - released(k))

where ``end`` is what a plan leaves live at the end of its forward, ``forward`` and ``backward`` the
plan's own peaks (its gradients and scratch included), and ``released`` the outputs of instance k
that later instances consumed and released before its backward (a block's output is the next
block's input). One compiled graph that runs N times has one plan for all N runs.

Each region offers its frontier of plans (end bytes, peak, predicted recompute time). Choosing one
per region to minimise the step's recompute time under a cap is a small MILP: one binary per
(region, plan), one row per instance. It is solved exactly by HiGHS; the least achievable step peak is
the same program with the peak as objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

#: objective units: microseconds for time keep HiGHS' coefficients O(1)
_TIME_SCALE = 1e6
#: a tie-break weight on the peak when minimising time (and on time when minimising the peak)
_TIE = 1e-9


@dataclass(frozen=True)
class StepOption:
    """One plan a region could run: what to save (node names of its joint graph) and its costs."""

    saved: tuple[str, ...]
    #: live at the end of its forward: saved values and outputs
    end_bytes: int
    #: its own peak over forward and backward, in the unit the region was planned in (checked
    #: against Inductor's schedule where the check ran, else the memory model's or its estimate)
    peak_bytes: int
    #: predicted recompute seconds per run
    time_s: float
    #: whether ``peak_bytes`` was checked against Inductor's schedule (not estimated)
    checked: bool = False
    #: the peak of its forward and of its backward where known apart (0: ``peak_bytes`` for both)
    forward_peak_bytes: int = 0
    backward_peak_bytes: int = 0
    #: its forward outputs that it does not save: a later graph that consumed them has released
    #: them before this graph's backward runs
    releasable_bytes: int = 0

    @property
    def forward(self) -> int:
        return self.forward_peak_bytes or self.peak_bytes

    @property
    def backward(self) -> int:
        return self.backward_peak_bytes or self.peak_bytes

    def backward_after(self, released: int) -> int:
        """The backward's peak when later graphs released ``released`` bytes of its outputs."""
        return self.backward - min(released, self.releasable_bytes)


def _costs(option: StepOption) -> tuple[float, ...]:
    """What a step pays for ``option``, each the lower the better: its backward's peak after any
    release lies between ``backward - releasable`` and ``backward``."""
    return (
        option.end_bytes,
        option.forward,
        option.backward,
        option.backward - option.releasable_bytes,
        option.time_s,
    )


def frontier(options: Iterable[StepOption]) -> list[StepOption]:
    """The options no other option beats on every cost a step pays (``_costs``; ties: the first)."""
    unique: dict[tuple[float, ...], StepOption] = {}
    for option in options:
        unique.setdefault(_costs(option), option)
    ordered = sorted(unique.values(), key=lambda o: (o.time_s, o.peak_bytes, o.end_bytes))
    kept: list[StepOption] = []
    for option in ordered:
        costs = _costs(option)
        if not any(all(a <= b for a, b in zip(_costs(k), costs, strict=True)) for k in kept):
            kept.append(option)
    return kept


@dataclass(frozen=True)
class Allocation:
    """One option index per region, and what the step is predicted to peak at and cost."""

    choice: tuple[int, ...]
    #: the activation part of the step peak (the static bytes are the caller's)
    activation_peak_bytes: int
    #: predicted recompute seconds of one step: each region's time times its runs
    time_s: float
    status: str


def step_activation_peak(
    frontiers: Sequence[Sequence[StepOption]],
    sequence: Sequence[int],
    choice: Sequence[int],
    extra: Sequence[int] = (),
    released: Sequence[int] = (),
) -> int:
    """The activation peak of the step formula in the module docstring for one choice; ``extra``
    adds bytes per instance that no plan changes (inputs from outside the compiled graphs),
    ``released`` is per instance too."""
    held, peak = 0, 0
    for k, region in enumerate(sequence):
        option = frontiers[region][choice[region]]
        own = max(option.forward, option.backward_after(_at(released, k)))
        peak = max(peak, held + own + _at(extra, k))
        held += option.end_bytes
    return peak


def _at(values: Sequence[int], k: int) -> int:
    return values[k] if k < len(values) else 0


def _program(frontiers: Sequence[Sequence[StepOption]], sequence: Sequence[int], released: Sequence[int]):
    """Variable offsets per region, the one-option-per-region rows and two peak rows per instance,
    its forward's and its backward's (activation bytes, to be bounded); rows ``2k`` and ``2k + 1``
    are instance ``k``'s."""
    offsets, total = [], 0
    for options in frontiers:
        offsets.append(total)
        total += len(options)
    pick = np.zeros((len(frontiers), total))
    for r, options in enumerate(frontiers):
        pick[r, offsets[r] : offsets[r] + len(options)] = 1
    rows = np.zeros((2 * len(sequence), total))
    before = np.zeros(total)
    for k, region in enumerate(sequence):
        rows[2 * k] = rows[2 * k + 1] = before
        for p, option in enumerate(frontiers[region]):
            rows[2 * k, offsets[region] + p] += option.forward
            rows[2 * k + 1, offsets[region] + p] += option.backward_after(_at(released, k))
        for p, option in enumerate(frontiers[region]):
            before[offsets[region] + p] += option.end_bytes
    return offsets, total, pick, rows


def _decode(x: np.ndarray, offsets: list[int], frontiers: Sequence[Sequence[StepOption]]) -> tuple[int, ...]:
    return tuple(
        int(np.argmax(x[offsets[r] : offsets[r] + len(options)])) for r, options in enumerate(frontiers)
    )


def _runs(sequence: Sequence[int], regions: int) -> list[int]:
    counts = [0] * regions
    for region in sequence:
        counts[region] += 1
    return counts


def allocate(
    frontiers: Sequence[Sequence[StepOption]],
    sequence: Sequence[int],
    cap_bytes: int | None,
    extra: Sequence[int] = (),
    released: Sequence[int] = (),
    *,
    _tie_break: bool = True,
) -> Allocation:
    """The choice with the least step recompute time whose activation peak (``extra`` included, see
    ``step_activation_peak``) is within ``cap_bytes``; with ``cap_bytes=None``, the choice with the
    least activation peak (status "least"). Returns status "infeasible" (and the least-peak choice)
    when no choice fits. ``released``: see ``step_activation_peak``."""
    if not frontiers or any(not options for options in frontiers):
        raise ValueError("every region needs at least one option")
    offsets, total, pick, rows = _program(frontiers, sequence, released)
    constant = np.array([_at(extra, k // 2) for k in range(2 * len(sequence))], dtype=float)
    runs = _runs(sequence, len(frontiers))
    time = np.zeros(total)
    for r, options in enumerate(frontiers):
        for p, option in enumerate(options):
            time[offsets[r] + p] = option.time_s * runs[r] * _TIME_SCALE
    scale = max(float(rows.max()), 1.0)
    if cap_bytes is not None:
        # minimise time; the peak rows bounded by the cap; the peak (of the last instance's row,
        # summed over rows as a proxy) only breaks ties
        objective = time + _TIE * rows.sum(axis=0) / scale
        constraints = [
            LinearConstraint(pick, 1, 1),
            LinearConstraint(rows / scale, -np.inf, (cap_bytes - constant) / scale),
        ]
        result = milp(objective, constraints=constraints, integrality=np.ones(total), bounds=Bounds(0, 1))
        if result.x is not None:
            choice = _decode(result.x, offsets, frontiers)
            peak = step_activation_peak(frontiers, sequence, choice, extra, released)
            if peak <= cap_bytes:  # HiGHS' feasibility tolerance aside
                status = "optimal" if result.status == 0 else "feasible"
                return Allocation(choice, peak, _step_time(frontiers, runs, choice), status)
    # least peak: one more variable z >= every instance row, minimised
    a_pick = np.hstack([pick, np.zeros((pick.shape[0], 1))])
    a_rows = np.hstack([rows / scale, -np.ones((rows.shape[0], 1))])
    objective = np.append(_TIE * time / max(float(time.max()), 1.0), 1.0)
    result = milp(
        objective,
        constraints=[LinearConstraint(a_pick, 1, 1), LinearConstraint(a_rows, -np.inf, -constant / scale)],
        integrality=np.append(np.ones(total), 0),
        bounds=Bounds(np.zeros(total + 1), np.append(np.ones(total), np.inf)),
    )
    if result.x is None:  # pragma: no cover - the program always has a feasible point
        raise RuntimeError(f"step allocation failed: {result.message}")
    choice = _decode(result.x[:total], offsets, frontiers)
    least = step_activation_peak(frontiers, sequence, choice, extra, released)
    status = "least" if cap_bytes is None else "infeasible"
    # the fastest of the least-peak choices: a tie-break weight in one objective is below HiGHS'
    # gap tolerance, so it is a second solve
    if _tie_break:
        fastest_least = allocate(frontiers, sequence, least, extra, released, _tie_break=False)
        if fastest_least.status in ("optimal", "feasible"):
            return dataclasses.replace(fastest_least, status=status)
    return Allocation(choice, least, _step_time(frontiers, runs, choice), status)


def fastest(
    frontiers: Sequence[Sequence[StepOption]],
    sequence: Sequence[int],
    extra: Sequence[int] = (),
    released: Sequence[int] = (),
) -> Allocation:
    """Every region's fastest option (ties: the lower peak): the runtime-optimal step."""
    choice = tuple(
        min(range(len(options)), key=lambda p, o=options: (o[p].time_s, o[p].peak_bytes))
        for options in frontiers
    )
    runs = _runs(sequence, len(frontiers))
    peak = step_activation_peak(frontiers, sequence, choice, extra, released)
    return Allocation(choice, peak, _step_time(frontiers, runs, choice), "fastest")


def _step_time(frontiers: Sequence[Sequence[StepOption]], runs: list[int], choice: Sequence[int]) -> float:
    return sum(frontiers[r][choice[r]].time_s * runs[r] for r in range(len(frontiers)))
