"""Every plan a search considers, verified once by the memory model: the search's single source of
truth for "what does this plan peak at, and what does it cost in time?"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch.fx as fx

from autoremat.cost_models import GraphCosts, PeakReport
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.mincut import CutResult


class MemoryModel(Protocol):
    name: str

    def peak(self, analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> PeakReport: ...


@dataclass(frozen=True)
class Candidate:
    cut: CutResult
    #: predicted peak bytes (memory model) and recompute seconds (time model)
    peak: int
    time_s: float
    #: name of the solver that proposed it
    source: str
    #: that solver's proven relative gap for its objective, when it has one
    gap: float | None = None
    #: the memory model's peak of the forward alone (it bounds a checked forward's, see
    #: ``inductor_check``)
    forward_peak: int = 0
    #: live at the end of the forward: saved values and the user's outputs (what the step keeps
    #: while later graphs of the step run, ``passes/step_allocation.py``)
    end_bytes: int = 0
    #: the memory model's peak of the backward (what the forward left live included)
    backward_peak: int = 0


def complete_saved(analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> CutResult:
    """A CutResult for ``saved`` plus the graph inputs the backward (and its recomputation) reads.

    Raises if the plan would recompute a node the placement forbids: a solver bug must not become a
    wrong gradient (the partitioner falls back to a correct plan)."""
    chosen = set(saved)
    for node in analysis.backward_computed(chosen):
        chosen.update(a for a in node.all_input_nodes if a.op == "placeholder")
    chosen.update(n for n in analysis.backward_reads if n.op == "placeholder")
    ordered = tuple(sorted(chosen, key=analysis.order.__getitem__))
    cut = CutResult(ordered, sum(analysis.facts[n].save_bytes for n in ordered))
    for node in analysis.recomputed(cut.saved):
        reason = analysis.facts[node].never_recompute
        if reason is not None:
            raise RuntimeError(f"budget plan would recompute {node.name} ({reason})")
    return cut


class Pool:
    """Plans keyed by their saved set, each simulated once; answers "least peak" and "fastest within
    a target"."""

    def __init__(self, analysis: JointGraphAnalysis, costs: GraphCosts, memory: MemoryModel) -> None:
        self.analysis, self.costs, self.memory = analysis, costs, memory
        self.plans: dict[tuple[fx.Node, ...], Candidate] = {}

    def add(self, cut: CutResult, source: str, gap: float | None = None) -> Candidate:
        known = self.plans.get(cut.saved)
        if known is not None:
            return known
        report = self.memory.peak(self.analysis, cut.saved)
        seconds = self.costs.value(self.costs.recompute_time(self.analysis.recomputed(cut.saved)))
        candidate = Candidate(
            cut,
            report.peak_bytes,
            seconds,
            source,
            gap,
            report.forward_peak_bytes,
            report.forward_end_bytes,
            report.backward_peak_bytes,
        )
        self.plans[cut.saved] = candidate
        return candidate

    def known(self, cut: CutResult) -> Candidate | None:
        """The plan ``cut`` if it was simulated already."""
        return self.plans.get(cut.saved)

    def adopt(self, candidate: Candidate) -> Candidate:
        """A plan simulated by another pool with the same models (a solver's trials, kept apart
        until it decides to offer them), kept as it is; a plan already here stays as it was."""
        return self.plans.setdefault(candidate.cut.saved, candidate)

    def __contains__(self, cut: CutResult) -> bool:
        return cut.saved in self.plans

    def least(self) -> Candidate:
        return min(self.plans.values(), key=lambda c: (c.peak, c.time_s))

    def fastest_within(self, target: int) -> Candidate | None:
        fitting = [c for c in self.plans.values() if c.peak <= target]
        return min(fitting, key=lambda c: (c.time_s, c.peak)) if fitting else None
