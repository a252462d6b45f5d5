"""The exact MILP (``milp.py``) as a search solver: it linearises the memory model around reference
plans (``problem_builder.py``) and lets the pool's simulation judge each proposal.

The linear model is exact at its reference and approximate elsewhere (it places each recomputed
value by the reference's recompute chains, which other plans do not follow exactly), so:

- for the least peak, each answer becomes the next reference, so the next solve cannot exploit the
  same modelling error;
- for a cap, a proposal the simulation rejects is followed by a solve with the cap lowered by the
  model's shortfall (the model's error is similar for neighbouring plans); on a big graph a rejected
  proposal is first repaired (``repair.py``), which can spare the solves at lower caps.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence

import torch.fx as fx

from autoremat.graph.blocks import RepeatedBlocks, find_repeated_blocks
from autoremat.passes.block_milp import RESTRICTED_NODE_LIMIT, BlockRestriction, ranked_tied, solve_by_blocks
from autoremat.passes.budget_problem import BudgetProblem
from autoremat.passes.cut import CutResult
from autoremat.passes.milp import MIP_REL_GAP, MilpResult, solve_budget, within_gap
from autoremat.passes.pool import Candidate, Pool, complete_saved
from autoremat.passes.problem_builder import BuiltProblem, build_problem
from autoremat.passes.repair import certified_gap, repair
from autoremat.passes.solver import SearchContext
from autoremat.passes.solves_ahead import SolvesAhead, solve_key

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
#: whether solves whose inputs are known early start on a second thread (``solves_ahead.py``; each
#: answer is the one solved in turn)
SOLVE_AHEAD = True


class MilpSolver:
    name = "milp"

    def __init__(self) -> None:
        self._blocks: RepeatedBlocks | None | bool = False  # False: not looked for yet
        self._problems: dict[frozenset[fx.Node], BuiltProblem] = {}
        self._restrictions: dict[int, BlockRestriction | None] = {}  # by id of a built problem
        #: answers started ahead, each with the time limit it was solved under
        self._ahead: SolvesAhead[tuple[float, MilpResult]] = SolvesAhead(SOLVE_AHEAD)

    def close(self) -> None:
        """End the search's solves ahead (``solves_ahead.SolvesAhead.close``)."""
        self._ahead.close()

    def forget_ahead(self) -> None:
        """Drop the solves started ahead that have not begun: the caps they were guessed for are
        not the search's."""
        self._ahead.cancel_pending()

    def _built(self, ctx: SearchContext, reference: Iterable[fx.Node]) -> BuiltProblem:
        """The problem linearised around ``reference``, built once per reference and search."""
        key = frozenset(reference)
        if key not in self._problems:
            self._problems[key] = build_problem(ctx.analysis, ctx.costs, key)
        return self._problems[key]

    def explore(self, ctx: SearchContext) -> None:
        """Least simulated peak over MILP solves, from the runtime-optimal and least-bytes cuts (on a
        big graph from the runtime-optimal cut only: from the least-bytes cut the solve returned the
        same plan at 29 and 57 layers, 0.02% lower at 12, and cost 1-12 s)."""
        starts = self._explore_starts(ctx)
        self._start(ctx, starts[1:], tie=True, minimise="peak")
        for start in starts:
            if not self._least_peak_from(ctx, start):
                return

    def explore_ahead(self, ctx: SearchContext) -> None:
        """Start the least-peak search's first solves, while the other explorers run: no answer
        before them changes them."""
        self._start(ctx, self._explore_starts(ctx), tie=True, minimise="peak")

    def _explore_starts(self, ctx: SearchContext) -> list[CutResult]:
        if self._restriction(ctx, self._built(ctx, ctx.high.saved)) is None:
            return [ctx.high, ctx.low]
        return [ctx.high]

    def _least_peak_from(self, ctx: SearchContext, start: CutResult) -> bool:
        """The least-peak solves linearised around ``start``, then around each answer; False when
        the search's time ran out."""
        reference: Iterable[fx.Node] = start.saved
        for _ in range(MAX_SOLVES_PER_REFERENCE):
            if ctx.deadline.left() <= 0:
                return False
            built = self._built(ctx, reference)
            results = self._solve_all(ctx, built, tie=True, minimise="peak")
            if not results:
                break
            result = results[0]
            cut = _cut(ctx, built, result.saved or ())
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
            reference = candidate.cut.saved
        return True

    def fastest(self, ctx: SearchContext, cap_bytes: int) -> None:
        """The least predicted recompute time within the min-cut plan's peak ``cap_bytes`` (the
        lower peak among equally fast plans), linearised around that plan: what may beat it on
        both counts at budget 1.0 (``search.py``)."""
        built = self._built(ctx, ctx.high.saved)
        # on a big graph all blocks tied, as the least-peak search (the whole program's try costs
        # 10 s at 57 layers)
        for result in self._solve_all(ctx, built, tie=True, cap_bytes=cap_bytes):
            self._pool(ctx, built, result)

    def fastest_ahead(self, ctx: SearchContext, cap_bytes: int) -> None:
        """Start ``fastest``'s solve, so that the search's thread can work meanwhile (it is one
        solve, linearised around the min-cut plan, whatever the search does before taking it)."""
        self._start(ctx, [ctx.high], tie=True, cap_bytes=cap_bytes)

    def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
        """Linearise around the best plan known to fit (the model is closest to the truth near it),
        then around the runtime-optimal plan; per reference, lower the cap by the model's shortfall
        until the simulation accepts the proposal. The second reference's first solve runs ahead,
        beside the first's."""
        references = self._references(ctx, cap_bytes)
        self._start(ctx, references[1:], cap_bytes=cap_bytes)
        for start in references:
            if not self._propose_from(ctx, self._built(ctx, start.saved), cap_bytes):
                return

    def propose_ahead(self, ctx: SearchContext, caps: Sequence[int], *, least: Candidate, busy: bool) -> None:
        """Start the first solves that ``propose`` will make for ``caps``, in order, as far as no
        answer before them can change them: around the runtime-optimal plan for each cap (around
        the fitting plan the pool now has only for the first cap, and only when the search's
        thread is ``busy`` with something else until it proposes: otherwise that solve is the one
        it makes first, in turn). ``least`` stands for the least-peak plan the search will have."""
        for i, cap in enumerate(caps):
            references = self._references(ctx, cap, least, grid=i > 0)
            self._start(ctx, references if i == 0 and busy else references[1:], cap_bytes=cap)

    def _references(
        self, ctx: SearchContext, cap_bytes: int, least: Candidate | None = None, grid: bool | None = None
    ) -> list[CutResult]:
        """``propose``'s references for ``cap_bytes`` (a grid's cap when ``grid``, by default
        ``ctx.grid``): the fitting plan's and the runtime-optimal one (on a big graph only the
        latter, and none for a grid's cap)."""
        if self._big(ctx):
            # a big graph, where each solve costs seconds: the target only, one reference
            return [] if (ctx.grid if grid is None else grid) else [ctx.high]
        fitting = ctx.pool.fastest_within(cap_bytes) or least or ctx.least or ctx.pool.least()
        return list({c.saved: c for c in (fitting.cut, ctx.high)}.values())

    def _big(self, ctx: SearchContext) -> bool:
        return self._restriction(ctx, self._built(ctx, ctx.high.saved)) is not None

    def _propose_from(self, ctx: SearchContext, built: BuiltProblem, cap_bytes: int) -> bool:
        """``propose``'s solves linearised around one reference; False when the search's time ran
        out."""
        big = self._big(ctx)
        cap = cap_bytes
        bound: list[float | None] = []
        proven: list[tuple[int, float | None]] = []  # (cap, the lower bound proven there)
        repairs: list[Candidate] = []
        lowest: Candidate | None = None
        for solves in range(MAX_SOLVES_PER_REFERENCE):
            if ctx.deadline.left() <= 0:
                break
            results = self._solve_all(ctx, built, bound=bound, cap_bytes=cap)
            if not results:
                log.debug("autoremat: MILP found no plan at cap=%d", cap)
                break
            proven.append((cap, bound[0] if bound else None))
            answers = [(self._pool(ctx, built, r), r) for r in results]
            lowest, answer = min(answers, key=lambda a: (a[0].peak, a[0].time_s))
            log.debug(
                "autoremat: MILP cap=%d simulated=%d target=%d time=%.3g s",
                cap,
                lowest.peak,
                cap_bytes,
                lowest.time_s,
            )
            if lowest.peak <= cap_bytes:
                break
            # on a big graph, where a solve at a lowered cap costs seconds to tens of seconds,
            # the rejected answer is repaired first (``repair.py``); the repair ends the search
            # when its plan is proven within the MILP's gap, or once a lowered cap missed too
            # (by little then: the cap was lowered by the first miss), which spares the
            # costliest solve, the one at the tightest cap
            if big and answer.saved is not None:
                repaired = self._repair(ctx, built, answer.saved, cap_bytes, proven)
                repairs += [repaired] if repaired is not None else []
                if repairs and (solves > 0 or within_gap(repairs[-1].gap)):
                    break
            cap -= lowest.peak - cap_bytes + int(cap_bytes * CAP_MARGIN)
            if cap <= 0:
                break
        proven_fits = [
            c for c in (lowest, *repairs) if c is not None and c.peak <= cap_bytes and within_gap(c.gap)
        ]
        best = min(proven_fits, key=lambda c: (c.time_s, c.peak), default=None)
        for repaired in repairs:
            if best is None or not _proven_as_fast(best, repaired, cap_bytes):
                ctx.pool.adopt(repaired)
        return ctx.deadline.left() > 0

    def _repair(
        self,
        ctx: SearchContext,
        built: BuiltProblem,
        saved: frozenset[int],
        cap_bytes: int,
        proven: list[tuple[int, float | None]],
    ) -> Candidate | None:
        """The plan ``repair.repair`` made of ``saved`` to fit ``cap_bytes``, or None. Its trials are
        simulated apart from the search's pool: the caller pools the plan unless a proven answer
        is as fast (``_proven_as_fast``)."""
        trials = Pool(ctx.analysis, ctx.costs, ctx.pool.memory)

        def excess(plan: frozenset[int]) -> int:
            cut = _cut(ctx, built, plan)
            known = ctx.pool.known(cut) or trials.add(
                cut, self.name, certified_gap(built.problem, plan, proven)
            )
            return known.peak - cap_bytes

        repaired = repair(built.problem, saved, excess)
        ctx.stats["milp_repairs"] = ctx.stats.get("milp_repairs", 0) + 1
        if repaired is None:
            log.debug("autoremat: repair of a rejected MILP plan failed")
            return None
        cut = _cut(ctx, built, repaired)
        candidate = ctx.pool.known(cut) or trials.add(cut, self.name)  # simulated: its gap is kept
        log.debug("autoremat: repaired MILP plan fits, time=%.3g s gap=%s", candidate.time_s, candidate.gap)
        return candidate

    def _pool(self, ctx: SearchContext, built: BuiltProblem, result: MilpResult) -> Candidate:
        return ctx.pool.add(_cut(ctx, built, result.saved or ()), self.name, result.gap)

    def _solve_all(
        self,
        ctx: SearchContext,
        built: BuiltProblem,
        *,
        tie: bool = False,
        bound: list[float | None] | None = None,
        **objective: object,
    ) -> list[MilpResult]:
        """Answers with a plan, best first: the whole program's; on a graph too big for it that has
        repeated blocks, all blocks tied with ``tie`` (the least-peak search, budget 1.0: 0.2 s at
        12 layers, 1-2 s at 57), else ``block_milp.solve_by_blocks``'s (``bound`` carries its proof
        between the caps for one target)."""
        restriction = self._restriction(ctx, built)
        direct = self._direct(ctx, built, tie, objective)
        if direct is not None:  # always so without a restriction
            result = self._solve(ctx, built.problem, **direct)
            if restriction is None:
                return [result] if result.saved is not None else []
            return ranked_tied(result, objective)
        index = {n: i for i, n in enumerate(built.nodes)}
        pooled = [[index[n] for n in c.cut.saved if n in index] for c in ctx.pool.plans.values()]

        def solve(problem: BudgetProblem, node_limit: int, **kwargs: object) -> MilpResult:
            return self._solve(ctx, problem, node_limit, **kwargs)

        # the relaxation's bound is asked for unless the whole program's try proves its own answer
        # (29 GPT layers: it does, in 1 s; 114: a 7.6 s try, then the 1.2 s relaxation): beside it
        self._start_solve(ctx, built.problem, RESTRICTED_NODE_LIMIT, relaxation=True, **objective)

        return solve_by_blocks(built.problem, restriction, solve, pooled=pooled, carried=bound, **objective)

    def _restriction(self, ctx: SearchContext, built: BuiltProblem) -> BlockRestriction | None:
        """The block places of ``built`` (once per built problem), or None when it is small enough
        for the whole program or has no repeated blocks."""
        if built.problem.n <= FULL_PROGRAM_MAX_CANDIDATES:
            return None
        if self._blocks is False:
            self._blocks = find_repeated_blocks(ctx.analysis)
            ctx.stats["blocks"] = self._blocks.copies if self._blocks else None
        if id(built) not in self._restrictions:
            self._restrictions[id(built)] = (
                BlockRestriction.of(self._blocks, built.nodes) if self._blocks else None
            )
        return self._restrictions[id(built)]

    def _direct(
        self, ctx: SearchContext, built: BuiltProblem, tie: bool, objective: dict[str, object]
    ) -> dict[str, object] | None:
        """The arguments of ``_solve_all``'s one solve of ``built``: the whole program's, or with
        all blocks tied (``tie``: one block's decisions on the whole schedule, its rows most of the
        work); None where it solves by blocks (``block_milp.solve_by_blocks``, which reads the
        pool)."""
        restriction = self._restriction(ctx, built)
        if restriction is None:
            return dict(objective)
        if not tie:
            return None
        return {
            "tied": restriction.tied,
            "tied_recompute": restriction.interior,
            "lazy_rows": True,
            **objective,
        }

    def _start(
        self, ctx: SearchContext, starts: Iterable[CutResult], *, tie: bool = False, **objective: object
    ) -> None:
        """Start ``_solve_all``'s solve linearised around each of ``starts`` ahead, where it is one
        solve (``solves_ahead.py``)."""
        for start in starts:
            built = self._built(ctx, start.saved)
            direct = self._direct(ctx, built, tie, objective)
            if direct is not None:
                self._start_solve(ctx, built.problem, MILP_NODE_LIMIT, **direct)

    def _start_solve(
        self, ctx: SearchContext, problem: BudgetProblem, node_limit: int, **kwargs: object
    ) -> None:
        """Start the solve ``_solve(ctx, problem, node_limit, **kwargs)`` would make (not one
        without HiGHS' root heuristics: ``milp.py`` swaps the process's warning filters for it)."""
        if kwargs.get("root_heuristics") is False:
            return
        time_limit = ctx.deadline.slice()
        solve = functools.partial(
            _timed_solve, problem, time_limit=time_limit, node_limit=node_limit, **kwargs
        )
        if self._ahead.start(solve_key(id(problem), node_limit, kwargs), solve, holds=problem):
            ctx.stats["milp_solves_started_ahead"] = ctx.stats.get("milp_solves_started_ahead", 0) + 1

    def _solve(
        self,
        ctx: SearchContext,
        problem: BudgetProblem,
        node_limit: int | None = None,
        **objective: object,
    ) -> MilpResult:
        # read at call time, as ``_start`` reads it: the keys of solves started ahead must match
        node_limit = MILP_NODE_LIMIT if node_limit is None else node_limit
        if ctx.before_solve is not None:
            ctx.before_solve()
        ahead = self._ahead.take(solve_key(id(problem), node_limit, objective))
        # an answer the safety net cut short on the worker (its limit was read when it was queued)
        # is solved again in turn, as it would have been
        result = ahead[1] if ahead is not None and ahead[1].solve_seconds < ahead[0] else None
        if result is not None:
            ctx.stats["milp_solves_ahead"] = ctx.stats.get("milp_solves_ahead", 0) + 1
        else:
            result = solve_budget(
                problem,
                time_limit=ctx.deadline.slice(),
                node_limit=node_limit,
                **objective,  # type: ignore[arg-type]
            )
        relaxation = bool(objective.get("relaxation"))
        log.debug(
            "autoremat: MILP %s (%s, node limit %d): %s in %.2f s, %d round(s) "
            "(time %s s, peak %s, bound %s)",
            objective.get("minimise", "time"),
            "linear relaxation" if relaxation else result.restricted or "whole",
            node_limit,
            result.status,
            result.solve_seconds,
            result.rounds,
            result.time_s,
            result.peak_bytes,
            result.bound,
        )
        stats = ctx.stats
        stats["milp_seconds"] = stats.get("milp_seconds", 0.0) + result.solve_seconds
        if relaxation:  # a bound, not a plan: the plan's stats stay the last MILP's
            stats["milp_relaxations"] = stats.get("milp_relaxations", 0) + 1
            return result
        stats["milp_solves"] = stats.get("milp_solves", 0) + 1
        stats["milp_binaries"] = result.num_binaries
        stats["milp_rows"] = result.num_rows
        stats["milp_last_status"] = result.status
        if result.restricted is not None:
            stats["milp_restricted"] = result.restricted
        return result


def _timed_solve(problem: BudgetProblem, *, time_limit: float, **kwargs: object) -> tuple[float, MilpResult]:
    """``solve_budget``'s answer, with the time limit it had."""
    return time_limit, solve_budget(problem, time_limit=time_limit, **kwargs)  # type: ignore[arg-type]


def _proven_as_fast(answer: Candidate, repaired: Candidate, cap_bytes: int) -> bool:
    """Whether ``answer``, a plan of the same target's search proven within the MILP's gap that
    fits ``cap_bytes`` (an answer, or a repair certified against a lowered cap's bound), is within
    that gap of the unproven ``repaired`` plan's time: the time model cannot tell them apart, and
    the proven plan is the one worth choosing (57 GPT layers: a repair 0.6% faster by the model,
    4.2% from its bound, against an answer proven within 0.8%)."""
    return (
        answer is not repaired
        and answer.peak <= cap_bytes
        and within_gap(answer.gap)
        and not within_gap(repaired.gap)
        and repaired.time_s >= answer.time_s * (1 - MIP_REL_GAP)
    )


def _cut(ctx: SearchContext, built: BuiltProblem, saved: Iterable[int]) -> CutResult:
    return complete_saved(ctx.analysis, (built.nodes[i] for i in saved))
