"""Which storage a value lives in: the one aliasing model every memory count uses.

Saving a value keeps its *storage* alive, and a storage is freed only when its last alias dies, so
bytes are charged per storage, never per value. A view or an in-place op aliases its input; an
element of a multi-output op that allocates (``native_layer_norm``) is a storage of its own; an element
of a multi-output *view* (``split``, ``unbind``) shares the storage of the view's base. The solvers'
byte charges (``analysis.py``) and the liveness model (``cost_models/liveness.py``) both read this
module, so they cannot disagree about what a saved chunk costs.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.graph.op_classes import OpClass, classify

#: Storage identity: the producing node, and the output index for multi-output nodes (None otherwise).
StorageKey = tuple[fx.Node, int | None]


def tensor_bytes(value: object) -> int:
    """Bytes of a (possibly symbolic) tensor at its hinted size; 0 for anything else."""
    if isinstance(value, torch.Tensor):
        return compat.planned_int(value.numel()) * value.dtype.itemsize
    return 0


def alias_of(node: fx.Node) -> StorageKey | None:
    """(node, output index) whose storage ``node`` shares, or None when it owns its storage."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        parent = node.args[0]
        if isinstance(parent.meta.get("val"), (tuple, list)):
            return parent, node.args[1]
        return None
    if classify(node) in (OpClass.VIEW, OpClass.MUTATION) and node.args and isinstance(node.args[0], fx.Node):
        return node.args[0], None
    return None


def storage_of(node: fx.Node, _memo: dict[fx.Node, StorageKey] | None = None) -> StorageKey:
    """The storage ``node``'s value lives in, following views, getitems and in-place ops to the owner.

    ``_memo`` caches answers across calls on one graph (chains of views are walked once)."""
    memo = {} if _memo is None else _memo
    chain: list[fx.Node] = []
    current = node
    while True:
        if current in memo:
            key = memo[current]
            break
        chain.append(current)
        alias = alias_of(current)
        if alias is None:
            key = (current, None)
            break
        parent, index = alias
        if index is not None and alias_of(parent) is None:
            key = (parent, index)
            break
        current = parent
    for n in chain:
        memo[n] = key
    return key


def storage_bytes(key: StorageKey) -> int:
    """Bytes of one storage (an output of a multi-output node, or a node's single output)."""
    node, index = key
    value = node.meta.get("val")
    if index is not None and isinstance(value, (tuple, list)):
        return tensor_bytes(value[index]) if index < len(value) else 0
    return tensor_bytes(value)


class StorageIndex(dict[fx.Node, StorageKey]):
    """``storage_of``'s memo (node -> storage), which also remembers each node's allocations.

    The memory model walks every node of every plan it simulates: on a 29-layer GPT's 4,980-node
    joint graph, 13 plans made 124,000 ``node_allocations`` calls, each classifying the node again.
    One index per analysed graph (``JointGraphAnalysis.storages``) answers both once per node; the
    graph's nodes must not change while it is in use (the solvers only read the joint graph)."""

    def __init__(self) -> None:
        super().__init__()
        self._allocations: dict[fx.Node, tuple[tuple[StorageKey, int], ...]] = {}
        self._touched: dict[fx.Node, tuple[StorageKey, ...]] = {}

    def allocations(self, node: fx.Node) -> tuple[tuple[StorageKey, int], ...]:
        """``node_allocations(node)``, computed once (a tuple: every later plan reads the same one)."""
        found = self._allocations.get(node)
        if found is None:
            found = self._allocations[node] = tuple(node_allocations(node))
        return found

    def touched(self, node: fx.Node) -> tuple[StorageKey, ...]:
        """The storages ``node`` reads, and its own: what running it keeps alive until then."""
        found = self._touched.get(node)
        if found is None:
            found = self._touched[node] = tuple(storage_of(a, self) for a in (*node.all_input_nodes, node))
        return found


def node_allocations(node: fx.Node) -> list[tuple[StorageKey, int]]:
    """Storages a node allocates when it runs (empty for inputs, aliases and non-tensors)."""
    if node.op != "call_function" or alias_of(node) is not None:
        return []
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return [((node, None), tensor_bytes(value))]
    if isinstance(value, (tuple, list)):
        return [((node, i), tensor_bytes(v)) for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
    return []
