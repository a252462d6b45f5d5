"""The budgeted save/recompute problem as plain data: what the exact solver optimises, and its own
brute-force evaluator (tests compare the MILP against it).

Decisions, per forward value ``v`` (a *candidate*): save it (``s_v``) and/or recompute it in the
backward (``r_v``). A value the backward reads must be saved or recomputed; recomputing ``v`` needs each
candidate input saved or recomputed; some values may not be saved, some not recomputed.

Memory along the schedule (positions of the forward, then of the backward's own nodes): each position
has a fixed base of live bytes; a saved storage group adds its bytes from its last forward use to its
last backward use; a recomputed value adds its bytes over its backward interval ``[first, last]``,
except the values a *burst* of recomputation (what runs just before one backward node) makes and uses
up: those are charged step by step within their burst, the position getting the most any step holds
on top of what is live before that node runs (``bursts``). ``problem_builder.py`` derives all of it
from a joint graph and a reference plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: position value meaning "never used in the backward"
UNUSED = -1


@dataclass(frozen=True)
class BudgetProblem:
    """Indices 0..n-1 are candidates in topological order; everything is plain ints and floats so the
    solver can be tested against brute force without building FX graphs."""

    #: candidate inputs of each candidate (other inputs are graph inputs: always available)
    inputs: tuple[tuple[int, ...], ...]
    #: candidates the backward reads directly: each must be saved or recomputed
    needed: tuple[int, ...]
    can_save: tuple[bool, ...]
    can_recompute: tuple[bool, ...]
    #: predicted seconds to recompute each candidate
    cost_s: tuple[float, ...]
    #: bytes a recomputation allocates, live over [first, last] of the backward (first and last are
    #: UNUSED for values charged by ``bursts`` instead, and for values no plan recomputes)
    recompute_bytes: tuple[int, ...]
    first: tuple[int, ...]
    last: tuple[int, ...]
    #: storage group of each candidate (views share their base's), its bytes, and where it is released
    group: tuple[int, ...]
    group_bytes: tuple[int, ...]
    #: last backward position a saved group is read (UNUSED: released when the backward starts)
    save_last: tuple[int, ...]
    #: forward position of the group's last forward use; saving keeps it live after that
    fwd_release: tuple[int, ...]
    bwd_base: tuple[int, ...]
    #: forward profile with nothing saved; its last entry is the end of the forward (user outputs)
    fwd_base: tuple[int, ...]
    #: extra bytes live at the end of the forward when a value is saved that only the backward reads:
    #: the forward then computes it there, with the backward-only values it needs (charged in full)
    save_extra_end: tuple[int, ...] = ()
    #: steps of the recompute bursts: (backward position, the candidates whose recomputed bytes are
    #: live together at one step of the burst before it). A position adds the largest of its steps'
    #: totals: a chain recomputed for one backward node holds a few of its values at a time, not all
    bursts: tuple[tuple[int, tuple[int, ...]], ...] = ()
    #: (backward position, storage groups whose last reader is a recomputation in the burst before
    #: it), one entry per position: ``save_last`` is the position before; while that burst runs
    #: they are live throughout
    burst_released: tuple[tuple[int, tuple[int, ...]], ...] = ()
    #: per backward position: bytes of the backward's own values while the burst before it runs (the
    #: node's outputs do not exist yet); empty: ``bwd_base``
    burst_base: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.inputs)

    def peak_bytes(self, saved: Iterable[int]) -> tuple[int, tuple[bool, ...]]:
        """(model peak, recomputed flags) of saving exactly ``saved``: the brute-force reference."""
        saved = set(saved)
        recomputed = self.recomputed_by(saved)
        return max([0, *modelled_forward(self, saved), *modelled_backward(self, saved)]), recomputed

    def recomputed_by(self, saved: set[int]) -> tuple[bool, ...]:
        """Which candidates the backward recomputes when exactly ``saved`` are saved."""
        flags = [False] * self.n
        stack = [v for v in self.needed if v not in saved]
        while stack:
            v = stack.pop()
            if flags[v]:
                continue
            flags[v] = True
            stack.extend(u for u in self.inputs[v] if u not in saved)
        return tuple(flags)

    def is_feasible(self, saved: set[int]) -> bool:
        if any(not self.can_save[v] for v in saved):
            return False
        flags = self.recomputed_by(saved)
        return all(self.can_recompute[v] for v in range(self.n) if flags[v])

    def time_s(self, saved: set[int]) -> float:
        flags = self.recomputed_by(saved)
        return sum(self.cost_s[v] for v in range(self.n) if flags[v])


def modelled_forward(problem: BudgetProblem, saved: set[int]) -> list[int]:
    """Modelled live bytes at each forward position: a saved storage is kept after its last forward
    use; the end of the forward also holds the backward-only values computed there to be saved."""
    groups = {problem.group[v] for v in saved}
    keep = [1 if g in groups else 0 for g in range(len(problem.group_bytes))]
    return weighted_forward(problem, keep, [1 if v in saved else 0 for v in range(problem.n)])


def modelled_backward(problem: BudgetProblem, saved: set[int]) -> list[int]:
    """Modelled live bytes at each backward position (difference array: O(nodes + positions))."""
    groups = {problem.group[v] for v in saved}
    keep = [1 if g in groups else 0 for g in range(len(problem.group_bytes))]
    return weighted_backward(problem, keep, [int(flag) for flag in problem.recomputed_by(saved)])


def weighted_forward(problem: BudgetProblem, keep: Sequence[float], save: Sequence[float]) -> list:
    """The forward profile with each storage group kept to the extent ``keep[g]`` and each candidate
    saved to ``save[v]``: 0/1 for a plan, the program's values for a linear relaxation (``milp.py``
    checks lazily built programs against every position with it)."""
    positions = len(problem.fwd_base)
    delta = [0] * (positions + 1)
    for g, weight in enumerate(keep):
        if weight:
            delta[min(problem.fwd_release[g] + 1, positions)] += problem.group_bytes[g] * weight
    profile, running = [], 0
    for t, base in enumerate(problem.fwd_base):
        running += delta[t]
        profile.append(base + running)
    if profile and problem.save_extra_end:
        profile[-1] += sum(extra * save[v] for v, extra in enumerate(problem.save_extra_end) if save[v])
    return profile


def weighted_backward(problem: BudgetProblem, keep: Sequence[float], recompute: Sequence[float]) -> list:
    """The backward profile with each storage group kept to the extent ``keep[g]`` (live until its last
    backward use) and each candidate recomputed to ``recompute[v]`` (live over its interval, or over
    its steps of a burst)."""
    positions = len(problem.bwd_base)
    delta = [0] * (positions + 1)

    def charge(start: int, end: int, nbytes: float) -> None:
        if nbytes and start != UNUSED and end >= start:
            delta[start] += nbytes
            delta[min(end, positions - 1) + 1] -= nbytes

    for g, weight in enumerate(keep):
        if weight:
            charge(0, problem.save_last[g], problem.group_bytes[g] * weight)
    for v, weight in enumerate(recompute):
        if weight:
            charge(problem.first[v], problem.last[v], problem.recompute_bytes[v] * weight)
    burst: dict[int, float] = {}  # positions with a burst: the most its steps hold
    for t, members in problem.bursts:
        step = sum(problem.recompute_bytes[v] * recompute[v] for v in members)
        burst[t] = max(burst.get(t, 0), step)
    for t, groups in problem.burst_released:
        burst[t] = burst.get(t, 0) + sum(problem.group_bytes[g] * keep[g] for g in groups)
    before = problem.burst_base or problem.bwd_base
    profile, running = [], 0
    for t, base in enumerate(problem.bwd_base):
        running += delta[t]
        profile.append(max(base, before[t] + burst[t]) + running if t in burst else base + running)
    return profile
