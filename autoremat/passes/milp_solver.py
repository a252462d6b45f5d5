"""The exact MILP (``milp.py``) as a search solver: it linearises the memory model around reference
plans (``problem_builder.py``) and lets the pool's simulation judge each proposal.

The linear model is exact at its reference and approximate elsewhere (it has not seen other plans'
recompute bursts), so:

- for the least peak, each answer becomes the next reference, so the next solve cannot exploit the
  same modelling error;
- for a cap, a proposal the simulation rejects is followed by a solve with the cap lowered by the
  model's shortfall (the model's error is similar for neighbouring plans).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch.fx as fx

from autoremat.graph.blocks import RepeatedBlocks, find_repeated_blocks
from autoremat.passes.block_milp import BlockRestriction
from autoremat.passes.budget_problem import BudgetProblem
from autoremat.passes.cut import CutResult
from autoremat.passes.milp import MilpResult, solve_budget
from autoremat.passes.pool import Candidate, complete_saved
from autoremat.passes.problem_builder import BuiltProblem, build_problem
from autoremat.passes.solver import SearchContext

log = logging.getLogger("autoremat")

#: MILP solves per reference plan (each with a lower cap, or a new reference) before moving on
MAX_SOLVES_PER_REFERENCE = 3
#: extra margin below the target when the simulation rejected a proposal: avoids creeping up to it
CAP_MARGIN = 0.005
#: branch-and-bound nodes per MILP solve: bounds the work, so the answer does not depend on the clock
MILP_NODE_LIMIT = 500
#: candidates above which the whole-graph program is restricted by repeated blocks, when it has them
#: (a 12-layer GPT's 1,029 candidates took HiGHS 8 s for the least peak and over 60 s for a cap)
FULL_PROGRAM_MAX_CANDIDATES = 600


class MilpSolver:
    name = "milp"

    def __init__(self) -> None:
        self._blocks: RepeatedBlocks | None | bool = False  # False: not looked for yet

    def explore(self, ctx: SearchContext) -> None:
        """Least simulated peak over MILP solves, from the runtime-optimal and least-bytes cuts."""
        for start in (ctx.high, ctx.low):
            reference: Iterable[fx.Node] = start.saved
            for _ in range(MAX_SOLVES_PER_REFERENCE):
                if ctx.deadline.left() <= 0:
                    return
                built = build_problem(ctx.analysis, ctx.costs, reference)
                results = self._solve_all(ctx, built, tie=True, minimise="peak")
                if not results:
                    break
                result = results[0]
                known = _cut(ctx, built, result) in ctx.pool
                candidate = [self._pool(ctx, built, r) for r in results][0]
                log.debug(
                    "autoremat: least-peak MILP %s: model peak=%s simulated=%d",
                    result.status,
                    result.peak_bytes,
                    candidate.peak,
                )
                if known or (result.peak_bytes or 0) >= candidate.peak:
                    break  # converged, or the model was exact or pessimistic here
                reference = candidate.cut.saved

    def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
        """Linearise around the best plan known to fit (the model is closest to the truth near it),
        then around the runtime-optimal plan; per reference, lower the cap by the model's shortfall
        until the simulation accepts the proposal."""
        fitting = ctx.pool.fastest_within(cap_bytes) or ctx.least or ctx.pool.least()
        references: list[CutResult] = list({c.saved: c for c in (fitting.cut, ctx.high)}.values())
        for start in references:
            built = build_problem(ctx.analysis, ctx.costs, start.saved)
            cap = cap_bytes
            for _ in range(MAX_SOLVES_PER_REFERENCE):
                if ctx.deadline.left() <= 0:
                    return
                results = self._solve_all(ctx, built, cap_bytes=cap)
                if not results:
                    log.debug("autoremat: MILP found no plan at cap=%d", cap)
                    break
                lowest = min((self._pool(ctx, built, r) for r in results), key=lambda c: (c.peak, c.time_s))
                log.debug(
                    "autoremat: MILP cap=%d simulated=%d target=%d time=%.3g s",
                    cap,
                    lowest.peak,
                    cap_bytes,
                    lowest.time_s,
                )
                if lowest.peak <= cap_bytes:
                    break
                cap -= lowest.peak - cap_bytes + int(cap_bytes * CAP_MARGIN)
                if cap <= 0:
                    break

    def _pool(self, ctx: SearchContext, built: BuiltProblem, result: MilpResult) -> Candidate:
        # a restricted solve proves nothing about the whole problem: no gap to claim
        gap = result.gap if result.restricted is None else None
        return ctx.pool.add(_cut(ctx, built, result), self.name, gap)

    def _solve_all(
        self, ctx: SearchContext, built: BuiltProblem, *, tie: bool = False, **objective: object
    ) -> list[MilpResult]:
        """The whole program's answer, or, on a graph too big for it with repeated blocks, the
        mixed restriction's, after the tied one's with ``tie`` (``block_milp.py``): only answers
        with a plan. The mixed solve's patterns are those of the pool's plans, tied ones included."""
        restriction = self._restriction(ctx, built)
        if restriction is None:
            result = self._solve(ctx, built.problem, **objective)
            return [result] if result.saved is not None else []
        results = []
        if tie:
            tied = self._solve(ctx, built.problem, tied=restriction.tied, **objective)
            if tied.saved is not None:
                self._pool(ctx, built, tied)
                results.append(tied)
        index = {n: i for i, n in enumerate(built.nodes)}
        pooled = [[index[n] for n in c.cut.saved if n in index] for c in ctx.pool.plans.values()]
        patterns = restriction.patterns(pooled, first=[r.saved for r in results if r.saved])
        mixed = self._solve(ctx, built.problem, choices=restriction.choices(patterns), **objective)
        return [r for r in (mixed, *results) if r.saved is not None]

    def _restriction(self, ctx: SearchContext, built: BuiltProblem) -> BlockRestriction | None:
        if built.problem.n <= FULL_PROGRAM_MAX_CANDIDATES:
            return None
        if self._blocks is False:
            self._blocks = find_repeated_blocks(ctx.analysis)
            ctx.stats["blocks"] = self._blocks.copies if self._blocks else None
        if not self._blocks:
            return None
        return BlockRestriction.of(self._blocks, built.nodes)

    @staticmethod
    def _solve(ctx: SearchContext, problem: BudgetProblem, **objective: object) -> MilpResult:
        result = solve_budget(
            problem, time_limit=ctx.deadline.slice(), node_limit=MILP_NODE_LIMIT, **objective
        )
        stats = ctx.stats
        stats["milp_solves"] = stats.get("milp_solves", 0) + 1
        stats["milp_seconds"] = stats.get("milp_seconds", 0.0) + result.solve_seconds
        stats["milp_binaries"] = result.num_binaries
        stats["milp_rows"] = result.num_rows
        stats["milp_last_status"] = result.status
        if result.restricted is not None:
            stats["milp_restricted"] = result.restricted
        return result


def _cut(ctx: SearchContext, built: BuiltProblem, result: MilpResult) -> CutResult:
    return complete_saved(ctx.analysis, (built.nodes[i] for i in result.saved or ()))
