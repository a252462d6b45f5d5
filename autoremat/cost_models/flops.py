"""FLOP counts of FX nodes from ``torch.utils.flop_counter``'s formulas, on FakeTensor metadata.

Ops without a registered formula (pointwise, reductions, views) count their output elements: one
operation per element written is what a memory-bound kernel does, and it keeps such ops cheaper than any
matmul producing the same output.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.utils.flop_counter import flop_registry

from autoremat import _torch_compat as compat


def _meta_value(arg: object) -> object:
    if isinstance(arg, fx.Node):
        return arg.meta.get("val")
    return arg


def _output_elements(value: object) -> int:
    return sum(compat.hint_int(t.numel()) for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


def node_flops(node: fx.Node) -> int:
    """Hinted FLOPs of one node (0 for placeholders and non-ops)."""
    if node.op != "call_function":
        return 0
    packet = getattr(node.target, "overloadpacket", None)
    out_val = node.meta.get("val")
    formula = flop_registry.get(packet)
    if formula is None:
        return _output_elements(out_val)
    args, kwargs = pytree.tree_map(_meta_value, (node.args, node.kwargs))
    try:
        return compat.hint_int(formula(*args, out_val=out_val, **kwargs))
    except Exception:  # a formula that rejects these metadata: fall back to the output size
        return _output_elements(out_val)
