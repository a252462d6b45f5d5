"""What a plan is (the saved set, ``CutResult``) and the rules that bound what a cut may recompute
(``RecomputeRules``), shared by every solver."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch.fx as fx

from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.graph.op_classes import CHEAP, RECOMPUTABLE, OpClass

#: Nodes that cost nothing to recompute on any device: aliases, tuple selection, host integer maths.
FREE_TO_RECOMPUTE = frozenset({OpClass.VIEW, OpClass.GETITEM, OpClass.SYMBOLIC})


@dataclass(frozen=True)
class RecomputeRules:
    """Which forward nodes the cut may place in the backward (i.e. recompute).

    ``classes`` are allowed wholesale; ``extra`` releases individual nodes (the budget solver uses it to
    let chosen matmuls be recomputed). Nodes the analysis marks never-recompute stay pinned regardless.
    """

    classes: frozenset[OpClass] = CHEAP
    extra: frozenset[fx.Node] = frozenset()

    def allows(self, analysis: JointGraphAnalysis, node: fx.Node) -> bool:
        facts = analysis.facts[node]
        if facts.never_recompute is not None:
            return False
        return facts.op_class in self.classes or node in self.extra


@dataclass(frozen=True)
class CutResult:
    """Which values the forward saves, and the bytes the cut charged for them."""

    saved: tuple[fx.Node, ...]
    cut_bytes: int

    def storage_bytes(self, analysis: JointGraphAnalysis) -> int:
        """Activation bytes the saved set keeps alive: one charge per storage, graph inputs excluded."""
        bases = {analysis.facts[n].storage_base for n in self.saved}
        return sum(analysis.facts[b].save_bytes for b in bases if b.op != "placeholder")


def cheap_by(analysis: JointGraphAnalysis, is_cheap: Callable[[fx.Node], bool]) -> RecomputeRules:
    """Rules whose cheap set is decided per node by a cost model (free nodes always count as cheap)."""
    nodes = frozenset(n for n in analysis.facts if analysis.is_forward(n) and is_cheap(n))
    return RecomputeRules(classes=FREE_TO_RECOMPUTE, extra=nodes)


def released(nodes: Collection[fx.Node], base: RecomputeRules | None = None) -> RecomputeRules:
    """Rules that additionally allow recomputing ``nodes``."""
    base = base or RecomputeRules()
    return RecomputeRules(base.classes, base.extra | frozenset(nodes))


def least_memory_rules(base: RecomputeRules) -> RecomputeRules:
    """Rules allowing every op that is correct to recompute: the least-memory end of the range."""
    return RecomputeRules(classes=RECOMPUTABLE | base.classes, extra=base.extra)
