"""Repairing a plan the memory model rejected by a small margin: stop saving the storages that are
cheapest to recompute per byte until the simulation accepts it.

The MILP plans with a linear model of memory (``problem_builder.py``), exact at its reference plan
and off elsewhere where other plans recompute at positions the reference's chains do not predict.
When the simulation rejects a proposal, ``milp_solver.py`` lowers the cap by the shortfall and
solves again. On a deep
model a restricted solve costs seconds to tens of seconds (114 GPT layers: 9 s at the target, 27 s at
the cap lowered twice), and a lowered cap overshoots the other way: the plan drops more than it must.
The shortfall is usually a few storages' worth (a 0.03-3% overshoot), and releasing that many bytes
of saved values live at the peak costs little recompute, so a few simulations replace a solve.

The repair is a heuristic: it proves nothing by itself. Its plan is certified against the lower
bounds the caller proved for the program at the caps it solved (``certified_gap``), as an answer
of those solves would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autoremat.passes.budget_problem import BudgetProblem
from autoremat.passes.milp import relative_gap

#: simulations one repair may spend: bounds its work by a count, not the clock
MAX_ROUNDS = 6


@dataclass(frozen=True)
class Release:
    """Stop saving storage group ``group`` (its saved candidates ``members``): the backward then
    recomputes what it read from them, ``seconds`` of predicted recompute, and ``nbytes`` are no
    longer kept from the forward to the backward."""

    group: int
    members: tuple[int, ...]
    seconds: float
    nbytes: int


def releases(problem: BudgetProblem, saved: Iterable[int]) -> list[Release]:
    """Every storage group the plan saving ``saved`` could stop saving (the recomputation it then
    needs is allowed), fewest recompute seconds per byte first, then by group: deterministic."""
    saved = frozenset(saved)
    recomputed = problem.recomputed_by(set(saved))
    # a candidate the backward reads, or a recomputation reads, is recomputed once not saved
    read = set(problem.needed)
    for v, flag in enumerate(recomputed):
        if flag:
            read.update(problem.inputs[v])
    by_group: dict[int, list[int]] = {}
    for v in sorted(saved):
        by_group.setdefault(problem.group[v], []).append(v)
    found = []
    for group, members in by_group.items():
        nbytes = problem.group_bytes[group]
        if nbytes <= 0:
            continue
        seconds = _added_recompute(problem, saved.difference(members), recomputed, read, members)
        if seconds is not None:
            found.append(Release(group, tuple(members), seconds, nbytes))
    return sorted(found, key=lambda r: (r.seconds / r.nbytes, r.group))


def _added_recompute(
    problem: BudgetProblem,
    saved: frozenset[int],
    recomputed: tuple[bool, ...],
    read: set[int],
    released: list[int],
) -> float | None:
    """Seconds of the recomputations that releasing ``released`` adds (None when one is not
    allowed): the released values something reads, and their inputs back to what is saved or
    recomputed already. Walked from the released values rather than as ``recomputed_by`` of the
    new plan: that walks the whole backward's needs once per group (hundreds of groups on a deep
    model), this only what the release adds."""
    added: set[int] = set()
    stack = [v for v in released if v in read]
    while stack:
        v = stack.pop()
        if v in added or v in saved or recomputed[v]:
            continue
        if not problem.can_recompute[v]:
            return None
        added.add(v)
        stack.extend(problem.inputs[v])
    return sum(problem.cost_s[v] for v in added)


def repair(
    problem: BudgetProblem,
    saved: Iterable[int],
    excess: Callable[[frozenset[int]], int],
    max_rounds: int = MAX_ROUNDS,
) -> frozenset[int] | None:
    """A plan derived from ``saved`` that ``excess`` accepts (``excess(plan) <= 0``: by how many bytes
    the simulated peak exceeds the target), or None within ``max_rounds`` calls of ``excess``.

    Each round releases the next cheapest storages until their bytes cover the excess (the model
    says nothing of which values are live at the simulated peak, so bytes released elsewhere are
    found out by the simulation): a round that lowered the excess is kept and the ranking redone
    from the new plan; one that did not is dropped and its groups are not tried again."""
    current = frozenset(saved)
    over = excess(current)
    rounds = 1
    if over <= 0:
        return current
    tried: set[int] = set()
    ranking = releases(problem, current)
    while rounds < max_rounds:
        batch = _cover([r for r in ranking if r.group not in tried], over)
        if not batch:
            return None
        tried.update(r.group for r in batch)
        trial = current.difference(v for r in batch for v in r.members)
        if not problem.is_feasible(set(trial)):  # releases overlapping in what they recompute
            continue
        now = excess(trial)
        rounds += 1
        if now <= 0:
            return trial
        if now < over:
            current, over = trial, now
            ranking = releases(problem, current)
    return None


def _cover(ranking: list[Release], nbytes: int) -> list[Release]:
    """Releases of at least ``nbytes`` in all, cheap in recompute: down the ranking (cheapest per
    byte first), except that where one later release covers the rest for less than the ranking's
    next ones would, it alone ends the batch (a large storage cheaper than many small ones)."""
    batch: list[Release] = []
    freed = 0
    for i, release in enumerate(ranking):
        if freed >= nbytes:
            break
        need = nbytes - freed
        onward, onward_bytes = 0.0, 0
        for later in ranking[i:]:
            if onward_bytes >= need:
                break
            onward += later.seconds
            onward_bytes += later.nbytes
        single = min(
            (r for r in ranking[i:] if r.nbytes >= need), key=lambda r: (r.seconds, r.group), default=None
        )
        if single is not None and single.seconds < onward:
            return [*batch, single]
        batch.append(release)
        freed += release.nbytes
    return batch


def certified_gap(
    problem: BudgetProblem, saved: Iterable[int], proven: Iterable[tuple[int, float | None]]
) -> float | None:
    """The relative gap of the plan ``saved`` against the best of the lower bounds ``proven``, each
    (cap, bound) on the recompute time of every plan the program allows at that cap, that covers
    the plan (its model peak within the cap: the plan is one the bound is about); None when none
    does."""
    chosen = set(saved)
    peak = problem.peak_bytes(chosen)[0]
    bounds = [bound for cap, bound in proven if bound is not None and peak <= cap]
    if not bounds:
        return None
    return relative_gap(problem.time_s(chosen), max(bounds))
