"""FLOPs and bytes of FX nodes, as sympy expressions of the graph's size symbols.

FLOPs come from ``torch.utils.flop_counter``'s formulas; we add what it lacks for transformers: the
CPU flash-attention kernels and causal masking (its SDPA formulas count the full score matrix, while
causal kernels skip the masked half). Ops without a formula (pointwise, reductions) count one
operation per output element (``TRANSCENDENTAL_FLOPS`` for exp, erf, tanh and friends).

Shapes may be symbolic (dynamic shapes). Everything here is built from the FakeTensor metadata without
guarding: a SymInt contributes its sympy expression; ``hint`` evaluates an expression with the shape
environment's hints.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.fx as fx
from torch.utils.flop_counter import flop_registry

from autoremat import _torch_compat as compat
from autoremat.graph.op_classes import ATTENTION_BACKWARD, ATTENTION_FORWARD, bound_args

aten = torch.ops.aten

Expr = sympy.Expr


def as_expr(value: Any) -> Expr:
    """A sympy expression for an int or SymInt (its symbolic form, never guarded)."""
    if isinstance(value, torch.SymInt):
        return sympy.sympify(value.node.expr)
    return sympy.Integer(int(value))


def hint(expr: Expr, hints: dict[sympy.Symbol, int] | None = None) -> float:
    """Evaluate ``expr`` with ``hints`` (symbol → value; see ``_torch_compat.graph_symbol_hints``)."""
    if not expr.free_symbols:
        return float(expr)
    hints = hints or {}
    missing = [s for s in expr.free_symbols if s not in hints]
    if missing:
        raise ValueError(f"no hint for size symbols {sorted(map(str, missing))} in {expr}")
    return float(expr.xreplace({s: sympy.Integer(hints[s]) for s in expr.free_symbols}))


def tensor_numel(value: torch.Tensor) -> Expr:
    numel = sympy.Integer(1)
    for size in value.shape:
        numel = numel * as_expr(size)
    return numel


def tensor_bytes(value: torch.Tensor) -> Expr:
    return tensor_numel(value) * value.dtype.itemsize


def output_tensors(node: fx.Node) -> list[torch.Tensor]:
    return [t for t in compat.tree_leaves(node.meta.get("val")) if isinstance(t, torch.Tensor)]


def input_tensors(node: fx.Node) -> list[tuple[fx.Node, torch.Tensor]]:
    """Distinct tensor inputs (a node read twice is read once)."""
    seen, found = set(), []
    for arg in node.all_input_nodes:
        val = arg.meta.get("val")
        if arg not in seen and isinstance(val, torch.Tensor):
            seen.add(arg)
            found.append((arg, val))
    return found


#: Causal kernels compute only the lower triangle of the score matrix: half the work for Sq == Sk.
CAUSAL_FRACTION = sympy.Rational(1, 2)
#: The backward recomputes the scores and runs four more matmuls of the same size as the forward's
#: two: dV, dP, dQ, dK plus the recomputed QK^T → 5/2 of the forward.
ATTENTION_BACKWARD_FACTOR = sympy.Rational(5, 2)


def attention_flops(node: fx.Node) -> Expr:
    """2·B·H·Sq·Sk·(D + Dv) for QKᵀ and PV, halved when causal, ×5/2 for the backward kernels."""
    args = bound_args(node)
    q, k, v = (args[name].meta["val"] for name in ("query", "key", "value"))
    # Layouts differ between kernels (B,H,S,D vs B,S,H,D) but every dimension but the sequence and
    # head dims multiply in the same way, so take Sq and Sk from the positions that differ.
    seq_dim = (
        -2
        if node.target.overloadpacket
        not in (
            aten._flash_attention_forward,
            aten._flash_attention_backward,
            aten._efficient_attention_forward,
            aten._efficient_attention_backward,
        )
        else 1
    )
    ndim = q.dim()
    seq_axis = seq_dim % ndim
    batch_heads = sympy.Integer(1)
    for i, size in enumerate(q.shape):
        if i not in (seq_axis, ndim - 1):
            batch_heads = batch_heads * as_expr(size)
    sq, sk = as_expr(q.shape[seq_dim]), as_expr(k.shape[seq_dim])
    flops = 2 * batch_heads * sq * sk * (as_expr(q.shape[-1]) + as_expr(v.shape[-1]))
    if args.get("is_causal") or args.get("causal"):
        flops = flops * CAUSAL_FRACTION
    if node.target.overloadpacket in ATTENTION_BACKWARD:
        flops = flops * ATTENTION_BACKWARD_FACTOR
    return sympy.expand(flops)


#: exp, erf, tanh, log, ... are evaluated by polynomial approximations: about ten vector instructions
#: per element on CPUs (Sleef), and on GPUs through special-function units at a fraction of the FMA
#: rate. Counting them as this many FLOPs puts them on the same scale as adds and multiplies.
TRANSCENDENTAL_FLOPS = 10
_TRANSCENDENTAL = {
    aten.exp,
    aten.exp2,
    aten.expm1,
    aten.log,
    aten.log1p,
    aten.log2,
    aten.log10,
    aten.erf,
    aten.erfc,
    aten.erfinv,
    aten.tanh,
    aten.sigmoid,
    aten.sin,
    aten.cos,
    aten.tan,
    aten.asin,
    aten.acos,
    aten.atan,
    aten.atan2,
    aten.sinh,
    aten.cosh,
    aten.pow,
    aten.rsqrt,
    aten.sqrt,
    aten.reciprocal,
    aten.gelu,
    aten.silu,
    aten.softplus,
    aten.lgamma,
    aten.digamma,
    aten._softmax,
    aten._log_softmax,
    aten.logsumexp,
}


def _formula_flops(node: fx.Node, formula) -> Expr | None:
    def meta(arg: object) -> object:
        return arg.meta.get("val") if isinstance(arg, fx.Node) else arg

    args, kwargs = compat.tree_map(meta, (node.args, node.kwargs))
    try:
        return as_expr(formula(*args, out_val=node.meta.get("val"), **kwargs))
    except Exception:  # a formula that rejects these metadata: the caller falls back
        return None


def node_flops_expr(node: fx.Node) -> Expr:
    """FLOPs of one node as an expression (0 for placeholders)."""
    if node.op != "call_function":
        return sympy.Integer(0)
    packet = getattr(node.target, "overloadpacket", None)
    if packet in ATTENTION_FORWARD or packet in ATTENTION_BACKWARD:
        return attention_flops(node)
    formula = flop_registry.get(packet)
    if formula is not None:
        flops = _formula_flops(node, formula)
        if flops is not None:
            return flops
    per_element = TRANSCENDENTAL_FLOPS if packet in _TRANSCENDENTAL else 1
    elements = sum((tensor_numel(t) for t in output_tensors(node)), sympy.Integer(0))
    if packet in (aten._softmax, aten._log_softmax):
        elements = elements * 2  # a max pass and a normalising pass around the exponentials
    return per_element * elements


def node_flops(node: fx.Node, hints: dict[sympy.Symbol, int] | None = None) -> int:
    """Hinted FLOPs of one node."""
    return int(hint(node_flops_expr(node), hints))
