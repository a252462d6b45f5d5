"""The budget MILP restricted by repeated blocks (``graph/blocks.py``): decide once per block place,
not once per node, where the whole-graph program is too big to solve exactly in a compile.

Two restrictions of the same program (``milp.solve_budget``'s ``tied`` and ``choices``), both with
every memory row of the whole graph, so how blocks interact in memory (each block's saved bytes live
on while later blocks run; the peak falls in one block's backward) is modelled exactly:

- **tied**: every block saves the same places. Few binaries (one block's), a solve HiGHS proves in
  well under a second at 12 layers; but one plan for all blocks is a real restriction (on a 12-layer
  GPT its least peak was 10% above the whole program's).
- **mixed**: each block picks one of a few *patterns* (sets of places to save), different blocks
  different ones: the patterns of the tied solutions and of every plan in the pool, read block by
  block. Binaries: blocks × patterns.

Both answers are feasible for the whole program and go into the pool, which checks them with the
memory model like any plan. A restricted solve's own gap says nothing about the whole program, so
each answer's gap is measured against a lower bound on the whole program (``solve_by_blocks``), and
``search.py`` calls a plan optimal only when that gap is within 1%.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch.fx as fx

from autoremat.graph.blocks import RepeatedBlocks
from autoremat.passes.budget_problem import BudgetProblem
from autoremat.passes.milp import MIP_REL_GAP, Choice, MilpResult, relative_gap, within_gap

#: the most patterns a mixed solve offers each block (binaries = blocks x patterns)
MAX_PATTERNS = 16
#: branch-and-bound nodes the whole program gets before the restricted programs take over: HiGHS
#: often proves a 1% gap at its root on a big graph, and when it does not, its answer and its bound
#: still count
FULL_ATTEMPT_NODES = 50
#: candidates above which the whole program's tries run without HiGHS' root sub-MIP heuristics
#: (``milp.solve_budget(root_heuristics=False)``): each sub-MIP is then a large program itself, and
#: the restricted programs find the answers where the try's own is poor. GPT at budget 0.5: 29
#: layers (about 2,400 candidates), 7.5 s with them and 1.1 s without, both proven within 1%; 12
#: layers (1,029), 2.0 s with them and proven, 0.7 s without but 10% from the bound, and the
#: restricted solves that follow cost 3.5 s
SUB_MIP_MAX_CANDIDATES = 1500
#: the runs of tied blocks are solved only when the whole program's try left its answer further than
#: this above its own bound: they find a good answer where the try's is poor (12 GPT layers: 10%
#: above); where it is close, the mixed solve over its blocks' patterns closes the rest (57 layers:
#: 1.4% -> 1.1%, 114 layers: 1.1% -> 0.4%, where the runs of tied blocks took 13.5 and 21 s)
CLOSE_ANSWER_GAP = 2 * MIP_REL_GAP
#: runs of tied blocks in the restricted program (before the last block, which is a run of its own):
#: on a 12-layer GPT, at budgets 0.1/0.3/0.6, within 0.7%/-0.2%/0.3% of the whole program's answer
#: (it had 5-29 s and a 1% gap), where all blocks tied were 31%/14%/87% above it
CHUNKS = 6
#: branch-and-bound nodes of a restricted solve
RESTRICTED_NODE_LIMIT = 100
#: branch-and-bound nodes of the whole program at a cap lowered for the memory model's shortfall,
#: run only when the relaxation leaves the patterns' answer unproven: HiGHS' cuts and first nodes
#: raise the bound well above the relaxation where blocks are few (12 GPT layers, budget 0.5: 10
#: nodes in 3 s took the bound from 4.3% to 0.8% below the answer; 50 nodes proved no more)
LATER_ATTEMPT_NODES = 10


class Solve(Protocol):
    """One ``milp.solve_budget`` call with the caller's limits and bookkeeping."""

    def __call__(self, problem: BudgetProblem, node_limit: int, **kwargs: object) -> MilpResult: ...


@dataclass(frozen=True)
class BlockRestriction:
    """The block places of one BudgetProblem: ``members[k][j]`` is the candidate index of place
    ``j`` in block ``k`` (places whose nodes are all candidates)."""

    members: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, blocks: RepeatedBlocks, nodes: Iterable[fx.Node]) -> BlockRestriction | None:
        index = {n: i for i, n in enumerate(nodes)}
        slots = [slot for slot in blocks.slots if all(n in index for n in slot)]
        if not slots:
            return None
        return cls(tuple(tuple(index[slot[k]] for slot in slots) for k in range(blocks.copies)))

    @property
    def tied(self) -> list[tuple[int, ...]]:
        """One group per place: its candidates in every block."""
        return self.chunked(1)

    @property
    def interior(self) -> list[tuple[int, ...]]:
        """One group per place: its candidates in every block but the first and the last, for
        ``solve_budget(tied_recompute=...)`` next to ``tied``. With the saves tied, the least
        recompute set is the same in each interior block, whose neighbours are blocks alike (the
        first and last border the embedding and the loss head, which may need a value recomputed in
        that block alone), so tying it spares HiGHS the copies of one block's recompute rows (its
        presolve drops rows that became duplicates): 57 GPT layers, 1.6 -> 0.7 s at budget 1.0; 114
        layers, 4.6 -> 1.4 s. Where the candidates outside places are saved unlike in two interior
        blocks, it is a further restriction; the all-tied answers it serves prove nothing anyway."""
        copies = len(self.members)
        if copies < 4:
            return []
        return [tuple(self.members[k][j] for k in range(1, copies - 1)) for j in range(len(self.members[0]))]

    def chunked(self, chunks: int) -> list[tuple[int, ...]]:
        """One group per place and run of consecutive blocks: the blocks split into ``chunks`` runs
        before the last block, which is a run of its own (its backward runs first, while every
        other block's saved bytes are live, so its plan is the one most worth setting apart)."""
        copies = len(self.members)
        if chunks <= 1 or copies <= 2:
            runs = [list(range(copies))]
        else:
            cuts = sorted({round(i * (copies - 1) / chunks) for i in range(chunks + 1)})
            runs = [list(range(a, b)) for a, b in itertools.pairwise(cuts)] + [[copies - 1]]
        return [
            tuple(self.members[k][j] for k in run)
            for run in runs
            if len(run) > 1
            for j in range(len(self.members[0]))
        ]

    def patterns(
        self, saved_sets: Iterable[Iterable[int]], first: Iterable[Iterable[int]] = ()
    ) -> list[frozenset[int]]:
        """The block patterns of ``first`` (all kept) and then the commonest of ``saved_sets``, up to
        ``MAX_PATTERNS``."""
        kept: dict[frozenset[int], None] = {}
        for saved in first:
            for pattern in self._split(saved):
                kept.setdefault(pattern)
        counts: Counter[frozenset[int]] = Counter()
        for saved in saved_sets:
            counts.update(self._split(saved))
        for pattern, _ in sorted(counts.items(), key=lambda kv: (-kv[1], sorted(kv[0]))):
            if len(kept) >= MAX_PATTERNS:
                break
            kept.setdefault(pattern)
        return list(kept)

    def choices(self, patterns: list[frozenset[int]]) -> list[Choice]:
        return [Choice(block, tuple(patterns)) for block in self.members]

    def _split(self, saved: Iterable[int]) -> list[frozenset[int]]:
        chosen = set(saved)
        return [frozenset(j for j, v in enumerate(block) if v in chosen) for block in self.members]


def solve_by_blocks(
    problem: BudgetProblem,
    restriction: BlockRestriction,
    solve: Solve,
    *,
    pooled: Iterable[Iterable[int]] = (),
    carried: list[float | None] | None = None,
    full_attempt_nodes: int | None = FULL_ATTEMPT_NODES,
    chunks: int = CHUNKS,
    **objective: object,
) -> list[MilpResult]:
    """Answers with a plan, best first: the whole program's after a short try if it proved its gap
    there; else that answer with the restricted programs' (runs of tied blocks, then per-block
    patterns from those answers and the ``pooled`` saved sets).

    Each restricted answer's gap is proven against the best lower bound on the whole program at this
    objective: the short try's dual bound and the linear relaxation's. The relaxation costs a
    fraction of a second and is tight when blocks are many (a fractional save in one block is nearly
    matched by saving it in that fraction of the blocks): 29 GPT layers, within 0.5-0.9% of the best
    plan; 12 layers, 7-17%, where the short try's bound counts. ``carried`` holds that bound between
    the solves for one target: a cap lowered after the memory model's shortfall only raises the
    optimum, so a higher cap's bound still holds, and a later cap's solve is the patterns' alone,
    with the whole program for ``LATER_ATTEMPT_NODES`` when the bounds leave its answer unproven.
    The whole program's tries skip HiGHS' root sub-MIPs above ``SUB_MIP_MAX_CANDIDATES``; the runs
    of tied blocks are skipped when the whole program's answer is within ``CLOSE_ANSWER_GAP`` of its
    bound.
    ``full_attempt_nodes=None`` skips the whole program (the restricted programs alone); ``chunks``
    is the number of runs of tied blocks."""
    pooled = [list(s) for s in pooled]
    known = list(carried or [])  # a copy: ``carried`` is rewritten below
    sub_mips = problem.n <= SUB_MIP_MAX_CANDIDATES

    def mixed(answers: list[MilpResult]) -> MilpResult:
        patterns = restriction.patterns(pooled, first=[r.saved for r in answers if r.saved is not None])
        return solve(problem, RESTRICTED_NODE_LIMIT, choices=restriction.choices(patterns), **objective)

    def keep(best: float | None) -> float | None:
        if carried is not None:
            carried[:] = [best]
        return best

    def proof(*bounds: float | None) -> float | None:
        relaxed = solve(problem, RESTRICTED_NODE_LIMIT, relaxation=True, **objective)
        return keep(_best_bound(*bounds, relaxed.bound))

    if known:  # a later cap for the same target
        answer = mixed([])
        if answer.saved is not None:
            bound = proof(*known)
            ranked = _ranked([answer], bound, objective)
            if within_gap(ranked[0].gap) or full_attempt_nodes is None:
                return ranked
            whole = solve(problem, LATER_ATTEMPT_NODES, root_heuristics=sub_mips, **objective)
            return _ranked([answer, whole], keep(_best_bound(bound, whole.bound)), objective)
    answers: list[MilpResult] = []
    if full_attempt_nodes is not None:
        whole = solve(problem, full_attempt_nodes, root_heuristics=sub_mips, **objective)
        if whole.saved is not None and within_gap(whole.gap):
            keep(_best_bound(*known, whole.bound))
            return [whole]
        answers.append(whole)
    close = [r for r in answers if r.saved is not None and r.gap is not None and r.gap <= CLOSE_ANSWER_GAP]
    if not close:
        answers.append(solve(problem, RESTRICTED_NODE_LIMIT, tied=restriction.chunked(chunks), **objective))
    answers.append(mixed(answers))
    return _ranked(answers, proof(*known, *(r.bound for r in answers if r.restricted is None)), objective)


def ranked_tied(answer: MilpResult, objective: dict[str, object]) -> list[MilpResult]:
    """All blocks tied (the least-peak search, budget 1.0): no proof against the whole program."""
    return _ranked([answer], None, objective)


def _ranked(answers: list[MilpResult], proof: float | None, objective: dict[str, object]) -> list[MilpResult]:
    found = [_certified(r, proof, objective) for r in answers if r.saved is not None]
    key = (lambda r: r.peak_bytes) if objective.get("minimise") == "peak" else (lambda r: r.time_s)
    return sorted(found, key=key)


def _best_bound(*bounds: float | None) -> float | None:
    known = [b for b in bounds if b is not None]
    return max(known) if known else None


def _certified(result: MilpResult, bound: float | None, objective: dict[str, object]) -> MilpResult:
    """``result`` with the gap it has against ``bound``, a lower bound on the whole program's
    objective (for a restricted answer: its own solver's gap says nothing about the whole program)."""
    if result.restricted is None:
        return result
    value = result.peak_bytes if objective.get("minimise") == "peak" else result.time_s
    gap = None
    if value == 0:  # neither objective goes below zero
        gap = 0.0
    elif bound is not None and value is not None:
        gap = relative_gap(value, bound)
    return dataclasses.replace(result, gap=gap)
