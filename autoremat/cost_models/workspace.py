"""Scratch memory an extern kernel allocates while it runs: invisible in the graph, real in the peak.

The liveness model counts a node's outputs; some kernels also allocate temporaries that live only
during the call. Where these are large and predictable we name them here, each rule measured against
the CPU allocator with ``torch.profiler`` (tests/test_liveness.py checks every rule against a
measurement, so a change in torch shows up as a failing test, not a silently wrong budget).

- oneDNN convolution on CPU reorders its input and weight into blocked layouts: forward scratch = input
  + weight bytes; backward = grad_output + input + weight bytes. Activations are counted with their
  channels padded to oneDNN's fp32 block of 16, which is exact for multiples of 16 and errs high
  (safe for a budget) by up to a third for narrower layers.
- CPU flash attention keeps one fp32 score block per thread: ``threads × q_split × kv_split × 4`` bytes,
  with torch's split sizes (q: 32 below 192 query rows, 64 below 768, else 256; kv: up to 512). The
  backward keeps two such blocks plus an fp32 copy of the query gradient.

On CUDA, cuBLAS/cuDNN workspaces come from a cached pool sized once per process and flash attention
needs no score buffer, so no rule applies there (0 bytes).
"""

from __future__ import annotations

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


def _padded_bytes(node: object) -> int:
    """Bytes of an NCHW activation with its channels padded to the oneDNN block."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.dim() < 3:
        return _bytes(node)
    channels = compat.planned_int(value.shape[1])
    padded = -(-channels // _CHANNEL_BLOCK) * _CHANNEL_BLOCK
    return _bytes(node) * padded // max(channels, 1)


def _bytes(node: object) -> int:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(value, torch.Tensor):
        return compat.planned_int(value.numel()) * value.dtype.itemsize
    return 0


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


def _score_block_bytes(query: fx.Node, key: fx.Node) -> int:
    q, k = query.meta.get("val"), key.meta.get("val")
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() < 2:
        return 0
    q_rows, kv_rows = compat.planned_int(q.shape[-2]), compat.planned_int(k.shape[-2])
    return torch.get_num_threads() * _q_split(q_rows) * min(kv_rows, _KV_SPLIT) * _FP32


def workspace_bytes(node: fx.Node) -> int:
    """Transient scratch bytes ``node``'s kernel allocates on top of its outputs (0 when unknown)."""
    if node.op != "call_function" or _device(node) != "cpu":
        return 0
    target, args = node.target, node.args
    if target is aten.convolution.default:
        return _padded_bytes(args[0]) + _bytes(args[1])
    if target is aten.convolution_backward.default:
        return _padded_bytes(args[0]) + _padded_bytes(args[1]) + _bytes(args[2])
    if target is aten._scaled_dot_product_flash_attention_for_cpu.default:
        return _score_block_bytes(args[0], args[1])
    if target is aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        query = args[1]
        q = query.meta.get("val") if isinstance(query, fx.Node) else None
        grad_q = compat.planned_int(q.numel()) * _FP32 if isinstance(q, torch.Tensor) else 0
        return 2 * _score_block_bytes(args[1], args[2]) + grad_q
    return 0
