"""The time model: what recomputing nodes costs on the target device (``CostModel.for_graph``).

It combines a device spec (datasheet, optionally calibrated) with per-node roofline costs and the
fusion model. Costs are sympy expressions of the graph's size symbols; decisions use their hinted
values, and plans record which symbols they depended on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.cost_models.calibration import Calibration
from autoremat.cost_models.device_specs import DeviceSpec
from autoremat.cost_models.flops import Expr, hint
from autoremat.cost_models.fusion import FUSIBLE, recompute_time, recompute_times
from autoremat.cost_models.roofline import NodeCost, node_cost
from autoremat.graph.analysis import JointGraphAnalysis

#: Bump whenever a formula or rule here changes: it is part of the partitioner's cache key.
COST_MODEL_VERSION = "roofline-fusion-1"


@dataclass(frozen=True)
class CostModel:
    """A device spec plus optional calibration; cheap to build, hashable into the cache key."""

    spec: DeviceSpec
    calibration: Calibration | None = None

    @property
    def effective_spec(self) -> DeviceSpec:
        return self.calibration.apply(self.spec) if self.calibration else self.spec

    def fingerprint(self) -> str:
        parts = (
            COST_MODEL_VERSION,
            self.spec.fingerprint(),
            self.calibration and self.calibration.fingerprint(),
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def for_graph(self, analysis: JointGraphAnalysis) -> GraphCosts:
        costs = _LazyCosts(analysis)
        return GraphCosts(self.effective_spec, costs, compat.graph_symbol_hints(analysis.graph))


class _LazyCosts(dict):
    """Node → NodeCost, computed on first use: solvers only ever ask about a fraction of the nodes."""

    def __init__(self, analysis: JointGraphAnalysis) -> None:
        super().__init__()
        self._facts = analysis.facts

    def __missing__(self, node: fx.Node) -> NodeCost:
        cost = self[node] = node_cost(node, self._facts[node].op_class)
        return cost


@dataclass
class GraphCosts:
    """Per-node costs of one joint graph on one device."""

    spec: DeviceSpec
    costs: dict[fx.Node, NodeCost]
    hints: dict[sympy.Symbol, int] = field(default_factory=dict)
    _linear_cache: dict[frozenset[fx.Node], dict[fx.Node, Expr]] = field(default_factory=dict, repr=False)
    #: each node's recompute share by which of its inputs share its kernel (``fusion.recompute_times``)
    _share_memo: dict[tuple[fx.Node, tuple[bool, ...]], Expr] = field(default_factory=dict, repr=False)

    def value(self, expr: Expr) -> float:
        return hint(expr, self.hints)

    def standalone_s(self, node: fx.Node) -> float:
        return self.value(self.costs[node].standalone_s(self.spec))

    def is_cheap_to_recompute(self, node: fx.Node) -> bool:
        """Fusible and memory-bound on this device: recomputing it inside a backward kernel costs about
        reading its inputs, which the backward often does anyway."""
        cost = self.costs[node]
        if cost.op_class not in FUSIBLE:
            return False
        compute = self.value(cost.compute_s(self.spec))
        memory = self.value((cost.bytes_read + cost.bytes_written) / sympy.Float(self.spec.bandwidth))
        return compute <= memory

    def recompute_time(self, recomputed: Collection[fx.Node]) -> Expr:
        return recompute_time(recomputed, self.costs, self.spec, self._share_memo)

    def recompute_times(self, recomputed: Collection[fx.Node]) -> dict[fx.Node, Expr]:
        return recompute_times(recomputed, self.costs, self.spec, self._share_memo)

    def linear_recompute_times(self, nodes: Collection[fx.Node]) -> dict[fx.Node, Expr]:
        """Per-node recompute times assuming all of ``nodes`` are recomputed together (each fusible
        node fused with its fusible inputs): the linear objective of the budget MILP. Cached, since
        the solver asks for the same set on every re-linearisation."""
        key = frozenset(nodes)
        if key not in self._linear_cache:
            self._linear_cache[key] = self.recompute_times(key)
        return self._linear_cache[key]


def default_cost_model(
    device: torch.device | None,
    spec_name: str | None = None,
    calibration: Calibration | None = None,
    model: type[CostModel] = CostModel,
) -> CostModel:
    """The time model ``model`` (a ``cost_models.TIME_MODELS`` entry) for a graph on ``device``, or for
    the device named by the ``device`` option."""
    from autoremat.cost_models.device_specs import spec_for_device, spec_for_name

    spec = spec_for_name(spec_name) if spec_name else spec_for_device(device)
    return model(spec, calibration)
