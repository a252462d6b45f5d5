"""Scratch memory an extern kernel allocates while it runs: invisible in the graph, real in the peak.

The liveness model counts a node's outputs; some kernels also allocate temporaries that live only
during the call. Where these are large and predictable we name them here, each rule measured against
the CPU allocator with ``torch.profiler`` (tests/test_liveness.py checks every rule against a
measurement, so a change in torch shows up as a failing test, not a silently wrong budget).

- oneDNN convolution on CPU, NCHW (eager's default), reorders its input and weight into blocked
  layouts: forward scratch = input + weight bytes; backward = grad_output + input + weight bytes.
  Activations are counted with their channels padded to oneDNN's fp32 block of 16, which is exact for
  multiples of 16 and errs high (safe for a budget) by up to a third for narrower layers.
- oneDNN convolution on channels-last operands (Inductor's layout optimisation runs every CPU
  convolution channels-last) reorders no activation: forward = weight + oneDNN's scratchpad of
  4 KiB per thread plus one; backward = the most of three phases above its outputs: the data
  gradient (the weight with input channels padded to 16, plus that scratchpad), the weight gradient
  (per-thread partial sums: (threads - 1) weights + 8 KiB) and the final copy of the weight
  gradient (2 weights). Within about one weight of the measurement for fp32 3x3 and 1x1 layers.
- CPU flash attention keeps one fp32 score block per thread: ``threads × q_split × kv_split × 4`` bytes,
  with torch's split sizes (q: 32 below 192 query rows, 64 below 768, else 256; kv: up to 512). The
  backward keeps two such blocks plus an fp32 copy of the query gradient.

On CUDA, cuBLAS/cuDNN workspaces come from a cached pool sized once per process and flash attention
needs no score buffer, so no rule applies there (0 bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat

aten = torch.ops.aten

#: bytes of one fp32 accumulator element
_FP32 = 4
#: torch's CPU flash attention block sizes: (query rows below which the split applies, split)
_Q_SPLITS = ((192, 32), (768, 64))
_Q_SPLIT_LARGE = 256
_KV_SPLIT = 512


#: oneDNN's fp32 channel block: activations are reordered to nChw16c, padding channels up to it
_CHANNEL_BLOCK = 16
#: oneDNN's convolution scratchpad on channels-last operands, per thread plus one (measured 4.0 KiB)
_SCRATCHPAD_PER_THREAD = 4096
#: the fixed part of oneDNN's per-thread weight-gradient reduction buffer (measured 8.2-8.5 KiB)
_WEIGHT_REDUCTION_BASE = 8192


def _value(node: object) -> object:
    return node.meta.get("val") if isinstance(node, fx.Node) else node


def _padded_bytes(value: object) -> int:
    """Bytes of an NCHW activation (or an OIHW weight) with its (input) channels padded to the oneDNN
    block."""
    if not isinstance(value, torch.Tensor) or value.dim() < 3:
        return _bytes(value)
    channels = compat.planned_int(value.shape[1])
    padded = -(-channels // _CHANNEL_BLOCK) * _CHANNEL_BLOCK
    return _bytes(value) * padded // max(channels, 1)


def _bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return compat.planned_int(value.numel()) * value.dtype.itemsize
    return 0


def _is_channels_last(value: object) -> bool:
    """Whether a 4-d tensor is laid out NHWC (torch's ``suggest_memory_format``, read without guards:
    planned sizes, so a symbolic shape adds none)."""
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        return False
    _, channels, _, width = (compat.planned_int(s) for s in value.shape)
    stride = [compat.planned_int(s) for s in value.stride()]
    return channels > 1 and stride[1] == 1 and stride[3] == channels and stride[2] == width * channels


def _onednn_channels_last(input: object, weight: object) -> bool:
    """oneDNN runs a convolution channels-last when its input or its weight is
    (``mkldnn_conv_use_channels_last``)."""
    return _is_channels_last(input) or _is_channels_last(weight)


def _scratchpad() -> int:
    return _SCRATCHPAD_PER_THREAD * (torch.get_num_threads() + 1)


def _channels_last_conv_backward(weight: object, output_mask: Sequence[bool]) -> int:
    """Scratch of a channels-last oneDNN convolution backward above its outputs (module docstring)."""
    grad_input, grad_weight = bool(output_mask[0]), bool(output_mask[1])
    w = _bytes(weight)
    phases = [_padded_bytes(weight) + _scratchpad()] if grad_input else []
    if grad_weight:
        threads = torch.get_num_threads()
        reduction = (threads - 1) * w + _WEIGHT_REDUCTION_BASE if threads > 1 else 0
        phases += [w + reduction, 3 * w]
    return max(phases, default=0) - (w if grad_weight else 0)


def _device(node: fx.Node) -> str:
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    return value.device.type if isinstance(value, torch.Tensor) else "cpu"


def _q_split(rows: int) -> int:
    for limit, split in _Q_SPLITS:
        if rows < limit:
            return split
    return _Q_SPLIT_LARGE


def _score_block_bytes(q: object, k: object) -> int:
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() < 2:
        return 0
    q_rows, kv_rows = compat.planned_int(q.shape[-2]), compat.planned_int(k.shape[-2])
    return torch.get_num_threads() * _q_split(q_rows) * min(kv_rows, _KV_SPLIT) * _FP32


def _with_layouts(args: Sequence[object], layouts: Sequence[compat.TensorLayout | None]) -> list[object]:
    """The argument values a kernel really gets: each tensor argument (in order) as the metadata says,
    or, where ``layouts`` gives one, a meta tensor of that size and stride. Layouts that do not pair
    up one to one with the tensor arguments are ignored."""
    values = [_value(a) for a in args]
    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if len(layouts) != len(tensors):
        return values
    for i, layout in zip(tensors, layouts, strict=True):
        if layout is not None:
            values[i] = torch.empty_strided(*layout, dtype=values[i].dtype, device="meta")
    return values


#: the kernels with a rule below
_SCRATCH_TARGETS = (
    aten.convolution.default,
    aten.convolution_backward.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
)


def workspace_bytes(node: fx.Node, layouts: Sequence[compat.TensorLayout | None] = ()) -> int:
    """Transient scratch bytes ``node``'s kernel allocates on top of its outputs (0 when unknown).

    ``layouts``: the (size, stride) each tensor argument really has when the kernel runs, where a
    compiler lays it out otherwise than the FX metadata (Inductor: channels-last convolutions);
    empty to trust the metadata."""
    if node.op != "call_function" or not any(node.target is t for t in _SCRATCH_TARGETS):
        return 0  # the liveness model asks for every node, and almost none has a rule
    if _device(node) != "cpu":
        return 0
    target, args = node.target, _with_layouts(node.args, layouts)
    if target is aten.convolution.default:
        if _onednn_channels_last(args[0], args[1]):
            return _bytes(args[1]) + _scratchpad()
        return _padded_bytes(args[0]) + _bytes(args[1])
    if target is aten.convolution_backward.default:
        if _onednn_channels_last(args[1], args[2]):
            return _channels_last_conv_backward(args[2], args[10])
        return _padded_bytes(args[0]) + _padded_bytes(args[1]) + _bytes(args[2])
    if target is aten._scaled_dot_product_flash_attention_for_cpu.default:
        return _score_block_bytes(args[0], args[1])
    if target is aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        q = args[1]
        grad_q = compat.planned_int(q.numel()) * _FP32 if isinstance(q, torch.Tensor) else 0
        return 2 * _score_block_bytes(args[1], args[2]) + grad_q
    return 0
