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
memory model like any plan; "optimal" is claimed for neither (``search.py`` only calls a plan optimal
when its gap is proven for the unrestricted problem, which a restricted solve does not prove).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx as fx

from autoremat.graph.blocks import RepeatedBlocks
from autoremat.passes.milp import Choice

#: the most patterns a mixed solve offers each block (binaries = blocks x patterns)
MAX_PATTERNS = 16


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
