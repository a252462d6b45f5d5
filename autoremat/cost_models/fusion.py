"""Which nodes Inductor fuses, and what recomputing a set of nodes in the backward costs given that.

Inductor generates one loop nest for a connected group of pointwise ops, views, reductions and simple
data movement (its "fusible" nodes), while matmuls, convolutions, attention and opaque ops become
extern kernels that read and write memory. So for a recomputed node ``r``:

- inputs produced by another recomputed fusible node arrive in registers: no bytes;
- inputs that are saved values, graph inputs or extern-kernel outputs are read from memory;
- the output is written to memory (plus one launch) only if some backward consumer cannot fuse with it
  (e.g. it feeds a matmul); otherwise it never leaves registers;
- recomputed extern kernels cost their full standalone time.

This is a deliberately simple, explicit model: it ignores Inductor's size-based fusion limits and
horizontal fusion, and counts each materialised recomputed node as one kernel launch.
"""

from __future__ import annotations

from collections.abc import Collection

import sympy
import torch.fx as fx

from autoremat.cost_models.device_specs import DeviceSpec
from autoremat.cost_models.flops import Expr, tensor_bytes
from autoremat.cost_models.roofline import FREE, ZERO, NodeCost, larger
from autoremat.graph.op_classes import OpClass

#: Op classes Inductor lowers to generated loops that it can fuse with each other.
FUSIBLE = frozenset(
    {
        OpClass.POINTWISE,
        OpClass.REDUCTION,
        OpClass.DATA_MOVEMENT,
        OpClass.FACTORY,
        OpClass.VIEW,
        OpClass.GETITEM,
        OpClass.SYMBOLIC,
    }
)


def fuses(producer: OpClass, consumer: OpClass) -> bool:
    """Whether Inductor can compute ``producer`` inside ``consumer``'s kernel."""
    return producer in FUSIBLE and consumer in FUSIBLE


def recompute_time(
    recomputed: Collection[fx.Node],
    costs: dict[fx.Node, NodeCost],
    spec: DeviceSpec,
    memo: dict[tuple[fx.Node, tuple[bool, ...]], Expr] | None = None,
) -> Expr:
    """Predicted extra backward time of recomputing ``recomputed`` (an expression in size symbols)."""
    return sum(recompute_times(recomputed, costs, spec, memo).values(), ZERO)


def recompute_times(
    recomputed: Collection[fx.Node],
    costs: dict[fx.Node, NodeCost],
    spec: DeviceSpec,
    memo: dict[tuple[fx.Node, tuple[bool, ...]], Expr] | None = None,
) -> dict[fx.Node, Expr]:
    """Each recomputed node's marginal share of the extra backward time, in the order given (sums of
    floats depend on their order: a set's order would make tied plans win by memory address).

    A node's share depends only on which of its inputs are computed in its kernel; ``memo`` keeps
    it by that, for one graph, ``costs`` and ``spec`` (a search costs thousands of nodes per plan,
    most of them as in the plan before, and each share is a few sympy operations)."""
    recomputed = dict.fromkeys(recomputed)
    memo = {} if memo is None else memo
    times: dict[fx.Node, Expr] = {}
    for node in recomputed:
        cost = costs[node]
        fusible = cost.op_class in FUSIBLE
        args = node.all_input_nodes if fusible else ()
        in_kernel = tuple(arg in recomputed and fuses(costs[arg].op_class, cost.op_class) for arg in args)
        key = (node, in_kernel)
        if key not in memo:
            memo[key] = _share(node, cost, spec, in_kernel, costs) if fusible else cost.standalone_s(spec)
        times[node] = memo[key]
    return times


def _share(
    node: fx.Node,
    cost: NodeCost,
    spec: DeviceSpec,
    in_kernel: tuple[bool, ...],
    costs: dict[fx.Node, NodeCost],
) -> Expr:
    """A fusible recomputed node's time: reading its inputs from outside its kernel, and writing its
    output where a backward consumer cannot fuse with it."""
    read: Expr = ZERO
    for arg, fused in zip(node.all_input_nodes, in_kernel, strict=True):
        val = arg.meta.get("val")
        if not fused and hasattr(val, "dtype") and hasattr(val, "shape"):
            read += tensor_bytes(val)
    share = cost.fused_s(spec, read)
    if any(not fuses(cost.op_class, costs[u].op_class) for u in node.users if u.op != "output"):
        share += sympy.Float(spec.launch_s) + cost.bytes_written / sympy.Float(spec.bandwidth)
    return share


def kernels(nodes: Collection[fx.Node], costs: dict[fx.Node, NodeCost]) -> list[list[fx.Node]]:
    """Group ``nodes`` into the kernels Inductor would generate: connected fusible nodes form one
    kernel, every other node is a kernel of its own; free nodes (views...) launch nothing."""
    nodes = [n for n in nodes if n in costs]
    parent = {n: n for n in nodes}

    def find(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in nodes:
        for arg in node.all_input_nodes:
            if arg in parent and fuses(costs[arg].op_class, costs[node].op_class):
                parent[find(arg)] = find(node)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in nodes:
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


def kernel_time(group: list[fx.Node], costs: dict[fx.Node, NodeCost], spec: DeviceSpec) -> Expr:
    """Roofline time of one generated kernel: it reads what comes from outside the group, writes what
    leaves it, and does all of its members' arithmetic."""
    if len(group) == 1 and costs[group[0]].op_class not in FUSIBLE:
        return costs[group[0]].standalone_s(spec)
    members = set(group)
    if all(costs[n].op_class in FREE for n in group):
        return ZERO
    compute: Expr = ZERO
    moved: Expr = ZERO
    read_from: set[fx.Node] = set()
    for node in group:
        compute += costs[node].compute_s(spec)
        for arg in node.all_input_nodes:
            val = arg.meta.get("val")
            if arg not in members and arg not in read_from and hasattr(val, "shape"):
                read_from.add(arg)
                moved += tensor_bytes(val)
        leaves = any(u not in members for u in node.users)
        if leaves and costs[node].op_class not in FREE:
            moved += costs[node].bytes_written
    return sympy.Float(spec.launch_s) + larger(compute, moved / sympy.Float(spec.bandwidth))
