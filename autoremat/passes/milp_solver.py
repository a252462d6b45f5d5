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

from autoremat.passes.cut import CutResult
from autoremat.passes.milp import MilpResult, solve_budget
from autoremat.passes.pool import complete_saved
from autoremat.passes.problem_builder import build_problem
from autoremat.passes.solver import SearchContext

log = logging.getLogger("autoremat")

#: MILP solves per reference plan (each with a lower cap, or a new reference) before moving on
MAX_SOLVES_PER_REFERENCE = 3
#: extra margin below the target when the simulation rejected a proposal: avoids creeping up to it
CAP_MARGIN = 0.005
#: branch-and-bound nodes per MILP solve: bounds the work, so the answer does not depend on the clock
MILP_NODE_LIMIT = 500


class MilpSolver:
    name = "milp"

    def explore(self, ctx: SearchContext) -> None:
        """Least simulated peak over MILP solves, from the runtime-optimal and least-bytes cuts."""
        for start in (ctx.high, ctx.low):
            reference: Iterable[fx.Node] = start.saved
            for _ in range(MAX_SOLVES_PER_REFERENCE):
                if ctx.deadline.left() <= 0:
                    return
                built = build_problem(ctx.analysis, ctx.costs, reference)
                result = self._solve(ctx, built.problem, minimise="peak")
                if result.saved is None:
                    break
                cut = complete_saved(ctx.analysis, (built.nodes[i] for i in result.saved))
                known = cut in ctx.pool
                candidate = ctx.pool.add(cut, self.name, result.gap)
                log.debug(
                    "autoremat: least-peak MILP %s: model peak=%s simulated=%d",
                    result.status,
                    result.peak_bytes,
                    candidate.peak,
                )
                if known or (result.peak_bytes or 0) >= candidate.peak:
                    break  # converged, or the model was exact or pessimistic here
                reference = cut.saved

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
                result = self._solve(ctx, built.problem, cap_bytes=cap)
                if result.saved is None:
                    log.debug("autoremat: MILP %s at cap=%d", result.status, cap)
                    break
                cut = complete_saved(ctx.analysis, (built.nodes[i] for i in result.saved))
                candidate = ctx.pool.add(cut, self.name, result.gap)
                log.debug(
                    "autoremat: MILP %s cap=%d model peak=%s simulated=%d target=%d time=%.3g s",
                    result.status,
                    cap,
                    result.peak_bytes,
                    candidate.peak,
                    cap_bytes,
                    candidate.time_s,
                )
                if candidate.peak <= cap_bytes:
                    break
                cap -= candidate.peak - cap_bytes + int(cap_bytes * CAP_MARGIN)
                if cap <= 0:
                    break

    @staticmethod
    def _solve(ctx: SearchContext, problem: object, **objective: object) -> MilpResult:
        result = solve_budget(
            problem, time_limit=ctx.deadline.slice(), node_limit=MILP_NODE_LIMIT, **objective
        )
        stats = ctx.stats
        stats["milp_solves"] = stats.get("milp_solves", 0) + 1
        stats["milp_seconds"] = stats.get("milp_seconds", 0.0) + result.solve_seconds
        stats["milp_binaries"] = result.num_binaries
        stats["milp_rows"] = result.num_rows
        stats["milp_last_status"] = result.status
        return result
