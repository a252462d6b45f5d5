"""The one small interface every budget solver implements, and what a search hands it.

A solver proposes saved sets; it never decides which plan wins. The search (``search.py``) gives each
solver a ``SearchContext`` — the graph's analysis and costs, the runtime-optimal and least-bytes cuts,
the verification pool and the clock — and asks it twice:

- ``explore(ctx)``, before the target is known: plans spanning the range, the least peak above all
  (a fractional budget is interpolated between the least peak and the runtime-optimal one);
- ``propose(ctx, cap_bytes)``: plans whose peak should be at most ``cap_bytes``.

Every plan goes into ``ctx.pool``, which checks it with the memory model; the search then picks the
fastest pooled plan within the target. A new solver is one new file with a class like this plus a
line in ``registry.py``; the ``solver`` option accepts exactly the registry's names.

Example::

    class LeastBytes:
        name = "least-bytes"

        def explore(self, ctx: SearchContext) -> None:
            ctx.pool.add(ctx.low, self.name)

        def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
            pass
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch.fx as fx

from autoremat.cost_models import GraphCosts
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.mincut import CutResult, RecomputeRules
from autoremat.passes.pool import Candidate, Pool

#: with several ranks the clock is ignored; this only stops a pathological solve
DETERMINISTIC_SAFETY_SECONDS = 60.0


class Deadline:
    """The search's time budget, a safety net only: solvers bound their own work (the MILP by a
    branch-and-bound node limit, greedy by a count of cuts), so plans do not depend on the machine's
    speed, and one solve may use all the time that is left (no per-solve slices: a slice is a
    clock-dependent stop). A search that hits the limit says so in its plan. With ``ignore_clock``
    (several ranks planning the same graph) the clock is not consulted at all, so ranks agree even
    when one of them is slow."""

    def __init__(self, seconds: float, ignore_clock: bool = False) -> None:
        self.total = seconds
        self.ignore_clock = ignore_clock
        self.end = time.perf_counter() + seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count: checking plans is not solving them."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.end += time.perf_counter() - started

    def left(self) -> float:
        if self.ignore_clock:
            return self.total
        return max(self.end - time.perf_counter(), 0.0)

    def slice(self) -> float:
        """Time one solve may take before the safety net stops it."""
        if self.ignore_clock:
            return DETERMINISTIC_SAFETY_SECONDS
        return self.left()


class StageClock:
    """Wall seconds per stage of one partition (the search's solvers, its checks, the split), each
    second charged to the innermost stage running, so the stages add up to the time measured: where
    a compile's partition time goes (``Plan.solver_stats["stage_seconds"]``, which the benchmarks
    print). Used from the search's own thread only: work started ahead on another thread shows as
    the wait, if any, of the stage that takes it."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self._timer = timer
        self._seconds: dict[str, float] = {}
        self._running: list[str] = []
        self._mark = timer()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._running.append(name)
        try:
            yield
        finally:
            self._charge()
            self._running.pop()

    def seconds(self) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in self._seconds.items()}

    def _charge(self) -> None:
        now = self._timer()
        if self._running:
            name = self._running[-1]
            self._seconds[name] = self._seconds.get(name, 0.0) + now - self._mark
        self._mark = now


@dataclass(frozen=True)
class JointGraph:
    """The joint graph itself, for a solver that runs another partitioner on it (``torch_knob``)."""

    module: fx.GraphModule
    inputs: Sequence[object]
    static_indices: list[int] | None


@dataclass
class SearchContext:
    """What a solver may read (and the pool and stats it may add to) during one budget search."""

    analysis: JointGraphAnalysis
    costs: GraphCosts
    #: the runtime-optimal rules and cut, and the least-bytes cut (every recomputable op released)
    base: RecomputeRules
    high: CutResult
    low: CutResult
    pool: Pool
    deadline: Deadline
    #: free-form counters a solver reports (they end up in ``Plan.solver_stats``)
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the least-peak plan once exploration is over (None while exploring)
    least: Candidate | None = None
    #: the joint graph, when the caller has it (a solver must work without it)
    joint: JointGraph | None = None
    #: True while the search proposes for a grid fraction tighter than the target (plans a looser
    #: budget keeps so it never picks a slower plan than a tighter one): a solver for which each
    #: proposal is costly may skip these
    grid: bool = False
    #: called by a solver before each solve that leaves the GIL for seconds (HiGHS): the search
    #: uses the wait to measure a plan it will check (``search._Checked.prefetch``)
    before_solve: Callable[[], None] | None = None
    #: the partition's stage timer (``StageClock``)
    clock: StageClock = field(default_factory=StageClock)


class Solver(Protocol):
    #: the name users pass as ``solver=`` and plans report
    name: str

    def explore(self, ctx: SearchContext) -> None:
        """Add plans spanning the range (before the target is known)."""

    def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
        """Add plans whose peak should be at most ``cap_bytes``."""

    # optional: ``prepare(ctx)``, the part of ``explore`` that needs no plan of the search's, made
    # early (for a fraction, while budget 1.0's solve runs: ``search._prepare``). It reads the
    # graph, its costs and the rules only: it must not add to or read the pool (plans pooled then
    # would count as budget 1.0's), nor compile or partition (a check may be lowering meanwhile);
    # ``explore`` must work without it (it is not called for a byte cap) and after it failed.
