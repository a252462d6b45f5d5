"""Roofline time of one node, standalone or fused into a neighbouring kernel.

    standalone(node) = launch + max(FLOPs / peak(dtype), (bytes read + bytes written) / bandwidth)
    fused(node)      =          max(FLOPs / peak(dtype), bytes read from memory / bandwidth)

A node Inductor fuses into a neighbour (``fusion.py`` says which) pays no launch and writes nothing:
its output stays in registers for the consumer. What it still pays is reading the inputs that are not
already produced inside the same kernel. That difference is the whole reason recomputing a pointwise
chain in a backward kernel is cheap, and the reason recomputing one whose output a matmul must read
from memory is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx

from autoremat.cost_models.device_specs import DeviceSpec
from autoremat.cost_models.flops import Expr, input_tensors, node_flops_expr, output_tensors, tensor_bytes
from autoremat.graph.op_classes import OpClass

ZERO = sympy.Integer(0)

#: Classes that never launch a kernel or move data: views alias, getitem selects, symbols are host ints.
FREE = frozenset({OpClass.VIEW, OpClass.GETITEM, OpClass.SYMBOLIC, OpClass.PLACEHOLDER})
#: Classes that run on tensor cores (matmul-like): their fp32 uses TF32 when allowed.
TENSOR_CORE = frozenset({OpClass.COMPUTE_INTENSIVE})


def larger(a: Expr, b: Expr) -> Expr:
    """``Max(a, b)``, short-cut for numbers: with static shapes every cost is one, and building
    ``sympy.Max`` (which tries to simplify) was most of a big graph's time model."""
    if a.is_Number and b.is_Number:
        return a if a >= b else b
    return sympy.Max(a, b)


@dataclass(frozen=True)
class NodeCost:
    """Work of one node, as expressions of the graph's size symbols."""

    flops: Expr
    bytes_read: Expr
    bytes_written: Expr
    dtype: torch.dtype
    op_class: OpClass

    def compute_s(self, spec: DeviceSpec) -> Expr:
        peak = spec.peak_flops(self.dtype, tensor_core=self.op_class in TENSOR_CORE)
        return self.flops / sympy.Float(peak)

    def standalone_s(self, spec: DeviceSpec) -> Expr:
        """Time as a kernel of its own."""
        if self.op_class in FREE:
            return ZERO
        memory = (self.bytes_read + self.bytes_written) / sympy.Float(spec.bandwidth)
        return sympy.Float(spec.launch_s) + larger(self.compute_s(spec), memory)

    def fused_s(self, spec: DeviceSpec, bytes_read: Expr | None = None) -> Expr:
        """Marginal time inside another kernel that reads ``bytes_read`` (default: all inputs) for it."""
        if self.op_class in FREE:
            return ZERO
        read = self.bytes_read if bytes_read is None else bytes_read
        return larger(self.compute_s(spec), read / sympy.Float(spec.bandwidth))


def _dtype(node: fx.Node) -> torch.dtype:
    outs = output_tensors(node)
    if outs:
        return outs[0].dtype
    ins = input_tensors(node)
    return ins[0][1].dtype if ins else torch.float32


def node_cost(node: fx.Node, op_class: OpClass) -> NodeCost:
    """FLOPs and bytes of ``node`` (views and other free nodes move nothing)."""
    if op_class in FREE:
        return NodeCost(ZERO, ZERO, ZERO, _dtype(node), op_class)
    read = sum((tensor_bytes(v) for _, v in input_tensors(node)), ZERO)
    written = sum((tensor_bytes(t) for t in output_tensors(node)), ZERO)
    return NodeCost(node_flops_expr(node), read, written, _dtype(node), op_class)
