"""Facts about a joint forward+backward graph that every later stage relies on.

One pass over the graph answers: which nodes the forward needs, which the backward computes (the
tangent closure), which forward values the backward reads, what each node is (OpClass), how many bytes
saving it costs (storages counted once: a view costs its base), and which user or safety constraints
pin it (SAC tags, randomness, collectives, mutations, readers of mutated inputs). Sizes come from
FakeTensor metadata and may be symbolic; they are evaluated with the shape environment's hints and never
guarded on. An unbacked size (``nonzero``, ``.item()``) has no hint: it is planned at a bound
(``_torch_compat.unbacked_bound``: its upper bound when finite), and the plan's notes say which.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.graph.op_classes import NEVER_RECOMPUTE, OpClass, classify
from autoremat.graph.placement import backward_computed, must_be_in_backward, place, recomputed_nodes
from autoremat.graph.storage import (
    StorageIndex,
    StorageKey,
    alias_of,
    storage_bytes,
    storage_of,
    tensor_bytes,
)

log = logging.getLogger("autoremat")

#: Cost we charge for saving one SymInt: a host-side integer, negligible but not free, so that the
#: solver never prefers saving a symbol over a value it can recompute from one already saved.
SYMINT_SAVE_BYTES = 8

_POLICY = compat.CheckpointPolicy
#: AOTAutograd's partitioner tags that place a node in the backward
_BACKWARD_TAGS = ("is_backward", "must_be_in_backward")


@dataclass
class NodeFacts:
    """What the solvers need to know about one node."""

    op_class: OpClass
    #: activation bytes saving this value keeps alive (hinted): its storage, charged once per base;
    #: 0 for graph inputs and their views, which are not activations (docs/architecture.md, "Memory")
    save_bytes: int
    #: why the value cannot be saved, or None when it can
    unsaveable: str | None
    #: why the node must not be recomputed, or None when recomputing it is correct
    never_recompute: str | None
    #: user/torch tag says: recompute this node in backward
    must_recompute: bool
    #: node whose storage this value aliases (graph/storage.py; itself when it owns its storage)
    storage_base: fx.Node
    #: bytes of a non-parameter graph input (or view of one) that saving it keeps referenced: not
    #: activation memory, but the solver still prefers not to extend an input's life for nothing
    input_bytes: int = 0


@dataclass
class JointGraphAnalysis:
    """Result of analysing one joint graph; the input of every solver and of the rewrite."""

    graph: fx.Graph
    num_fwd_outputs: int
    facts: dict[fx.Node, NodeFacts]
    order: dict[fx.Node, int]
    primals: list[fx.Node]
    static_inputs: list[fx.Node]
    fwd_outputs: list[fx.Node]
    #: the one placement (graph/placement.py): what runs in the forward, what in the backward
    forward_nodes: frozenset[fx.Node]
    must_run_in_forward: frozenset[fx.Node]
    tangent_closure: frozenset[fx.Node]
    #: values (outside the tangent closure) that the backward reads or returns
    backward_reads: set[fx.Node]
    #: backward outputs computable without tangents (they must be available to the backward as is)
    tangent_free_grads: set[fx.Node]
    notes: list[str] = field(default_factory=list)
    #: each node's storage and allocations, shared by every plan the memory model simulates
    storages: StorageIndex = field(default_factory=StorageIndex)

    @functools.cached_property
    def tangents(self) -> tuple[fx.Node, ...]:
        """The incoming gradients' placeholders (the memory model asks for every plan it simulates)."""
        return tuple(n for n in self.facts if n.op == "placeholder" and compat.is_tangent(n))

    def is_forward(self, node: fx.Node) -> bool:
        return node in self.forward_nodes

    def recomputed(self, saved: Iterable[fx.Node]) -> list[fx.Node]:
        """Forward nodes the backward runs again when the forward saves exactly ``saved``, in graph
        order (so sums over them do not depend on memory addresses)."""
        nodes = recomputed_nodes(self.backward_reads, self.forward_nodes, saved)
        return sorted(nodes, key=self.order.__getitem__)

    def backward_computed(self, saved: Iterable[fx.Node]) -> list[fx.Node]:
        """Nodes outside the tangent closure the backward computes when the forward saves ``saved``,
        in graph order."""
        return sorted(backward_computed(self.backward_reads, saved), key=self.order.__getitem__)


def _saveability(node: fx.Node) -> tuple[int, str | None]:
    """(bytes if saved, reason it cannot be saved)."""
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return tensor_bytes(value), None
    if isinstance(value, torch.SymFloat):
        return 0, "SymFloat values are not saved (their users are recomputed instead)"
    if isinstance(value, compat.py_sym_types):
        return SYMINT_SAVE_BYTES, None
    if compat.is_opaque_node(node) or type(value).__name__ in ("BackwardState", "FakeScriptObject"):
        return 0, None
    if value is None and node.op == "placeholder":
        return 0, None
    return 0, f"non-tensor value of type {type(value).__name__}"


def _recompute_tag(node: fx.Node) -> object:
    return node.meta.get("recompute")


def _tagged_must_recompute(node: fx.Node) -> bool:
    return _recompute_tag(node) in (_POLICY.MUST_RECOMPUTE, _POLICY.PREFER_RECOMPUTE)


def _checkpoint_boundaries(graph: fx.Graph) -> set[fx.Node]:
    """Outputs of one checkpointed region consumed by a later region: saved, as eager AC would.

    Without this, two back-to-back ``torch.utils.checkpoint`` blocks would fuse into one recompute
    chain reaching back to the first block's input.
    """
    boundaries: set[fx.Node] = set()
    for node in graph.nodes:
        if not _tagged_must_recompute(node) or "ac_graph_id" not in node.meta:
            continue
        for user in node.users:
            if _tagged_must_recompute(user) and user.meta.get("ac_graph_id", -1) > node.meta["ac_graph_id"]:
                boundaries.add(node)
        if node.meta.get("has_backward_hook", False) and not any(
            _tagged_must_recompute(u) for u in node.users
        ):
            boundaries.add(node)
    return boundaries


def _backward_mutation_sources(graph: fx.Graph) -> set[fx.Node]:
    """Sources of forward copy_ into an input that the backward mutates too: never recompute them."""
    mutated_in_bw = {
        n.args[0] for n in graph.nodes if n.target is torch.ops.aten.copy_.default and must_be_in_backward(n)
    }
    return {
        n.args[1]
        for n in graph.nodes
        if n.target is torch.ops.aten.copy_.default
        and compat.partitioner_tag(n) not in _BACKWARD_TAGS
        and n.args[0] in mutated_in_bw
        and isinstance(n.args[1], fx.Node)
    }


def _never_recompute_reason(
    node: fx.Node, op_class: OpClass, forced_save: bool, tagged_recompute: bool, reads_mutated: bool
) -> str | None:
    """Why recomputing ``node`` would be wrong (or against the user's wishes); None if it is fine."""
    if node.op == "placeholder":
        return "graph input"
    if reads_mutated:
        return "reads a graph input that the forward mutates afterwards"
    if _recompute_tag(node) == _POLICY.MUST_SAVE or forced_save:
        return "tagged MUST_SAVE"
    if op_class is OpClass.COLLECTIVE and tagged_recompute:
        return None  # the user explicitly asked to recompute this collective
    if op_class in NEVER_RECOMPUTE:
        return f"{op_class.value} op"
    return None


def _storage_owner(
    node: fx.Node, key: StorageKey, facts: dict[fx.Node, NodeFacts], storages: dict[fx.Node, StorageKey]
) -> fx.Node:
    """The node that stands for ``node``'s storage: the base of a chain of aliases (a getitem that
    picks one output of a multi-output allocator stands for that output's storage)."""
    alias = alias_of(node)
    if alias is not None and alias[0] in facts and storage_of(alias[0], storages) == key:
        return facts[alias[0]].storage_base
    return node


def analyse(
    graph: fx.Graph, *, num_fwd_outputs: int, static_lifetime_input_indices: list[int] | None
) -> JointGraphAnalysis:
    """Analyse a joint graph produced by AOTAutograd (after DCE/CSE)."""
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    output = next(n for n in reversed(nodes) if n.op == "output")
    outputs = compat.arg_tree_leaves(*output.args)
    fwd_outputs = [o for o in outputs[:num_fwd_outputs] if isinstance(o, fx.Node)]
    bwd_outputs = [o for o in outputs[num_fwd_outputs:] if isinstance(o, fx.Node)]

    primals = [n for n in nodes if compat.is_primal(n)]
    static_idx = set(static_lifetime_input_indices or ())
    static_inputs = [p for i, p in enumerate(primals) if i in static_idx]

    boundaries = _checkpoint_boundaries(graph)
    recompute_tagged = {n for n in nodes if _tagged_must_recompute(n) and n not in boundaries}
    placement = place(nodes, fwd_outputs, recompute_tagged)
    tangent_closure = placement.tangent_closure

    tangent_free_grads = {o for o in bwd_outputs if o not in tangent_closure}
    backward_reads = set(tangent_free_grads)
    for node in tangent_closure:
        backward_reads.update(a for a in node.all_input_nodes if a not in tangent_closure)

    forced_save = boundaries | _backward_mutation_sources(graph)
    static_set = set(static_inputs)
    facts: dict[fx.Node, NodeFacts] = {}
    storages = StorageIndex()
    notes: list[str] = []
    for node in nodes:
        if node.op == "output":
            continue
        op_class = classify(node)
        nbytes, unsaveable = _saveability(node)
        key = storage_of(node, storages)
        base = _storage_owner(node, key, facts, storages)
        if base is not node and unsaveable is None:
            nbytes = storage_bytes(key)  # saving an alias keeps its whole storage alive
        input_bytes = 0
        if base.op == "placeholder":
            input_bytes = 0 if base in static_set else storage_bytes(key)
            nbytes = 0
        must_recompute = node in recompute_tagged
        never = _never_recompute_reason(
            node, op_class, node in forced_save, must_recompute, node in placement.reads_mutated_input
        )
        if must_recompute and never is not None:
            notes.append(f"{node.name}: recompute tag ignored ({never}); its value is saved instead")
            must_recompute = False
        facts[node] = NodeFacts(op_class, nbytes, unsaveable, never, must_recompute, base, input_bytes)
    for symbol, (_, why) in compat.planned_sizes(graph).items():
        notes.append(f"size {symbol} planned at {why}")
    for note in notes:
        log.debug("autoremat: %s", note)
    return JointGraphAnalysis(
        graph=graph,
        num_fwd_outputs=num_fwd_outputs,
        facts=facts,
        order=order,
        primals=primals,
        static_inputs=static_inputs,
        fwd_outputs=fwd_outputs,
        forward_nodes=placement.forward_nodes,
        must_run_in_forward=placement.must_run_in_forward,
        tangent_closure=tangent_closure,
        backward_reads=backward_reads,
        tangent_free_grads=tangent_free_grads,
        notes=notes,
        storages=storages,
    )


def stable_node_keys(graph: fx.Graph) -> dict[fx.Node, str]:
    """A key per node that names the same computation when the same model is traced again.

    Node names are not such a key: a second trace of the same Dynamo graph (``step.py`` compiles a
    graph again with the plan chosen for the whole step) numbers them on from the first, and may add
    size computations (``sym_size``, products of sizes) the first trace folded into constants. A
    placeholder keeps its name (``primals_3``, ``tangents_1``); any other node is its target and its
    rank among the graph's nodes of that target that compute tensors (nodes computing anything else
    are ranked apart, so the size computations a trace adds do not shift a tensor's key).
    """
    keys: dict[fx.Node, str] = {}
    seen: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            keys[node] = node.name
            continue
        kind = "tensor" if isinstance(node.meta.get("val"), torch.Tensor) else "other"
        target = f"{kind}:{node.op}:{node.target}"
        rank = seen.get(target, 0)
        seen[target] = rank + 1
        keys[node] = f"{target}#{rank}"
    return keys
