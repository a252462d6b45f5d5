"""The peak of a training step as Inductor will run it: a replay of the memory plan in the wrapper
Inductor generates for the forward and the backward graph (docs/architecture.md, "Memory under
Inductor").

The op-by-op model (``liveness.py``) is exact for the codegen-free compiler, but Inductor fuses kernels,
overwrites donated buffers in place and reuses buffers, and its peak moves. Replaying the wrapper's
allocations, reuses and frees, plus each extern kernel's scratch (``workspace.py``), matched the CPU
allocator's measured peak on gpt2, llama, deep_mlp and long_context at every budget of the quick suite.
It needs Inductor's lowering and scheduling (about 1-1.5 s a graph on 2 CPU cores at the suite's
sizes, with the kernels' vector tiling skipped), so the search checks a few finished plans with it
(``passes/inductor_check.py``); it is not a model a solver can query per candidate.

Counted like the op-by-op model: activations, the user's forward outputs, the gradients and scratch.
Parameters, the batch and their views are graph inputs of the forward and are not counted; the
backward starts with the saved activations and the incoming gradients live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from autoremat import _torch_compat as compat
from autoremat.cost_models.workspace import workspace_bytes


@dataclass(frozen=True)
class InductorStepPeak:
    """Peak bytes of one forward + backward under Inductor's memory plan."""

    peak_bytes: int
    forward_peak_bytes: int
    #: the backward's peak above nothing: what the forward left live plus the backward's own
    backward_peak_bytes: int
    #: live at the end of the forward: saved activations and the user's outputs (storages once)
    forward_end_bytes: int


def _outputs(gm: fx.GraphModule) -> list[Any]:
    (output,) = gm.graph.find_nodes(op="output")
    return list(output.args[0])


def _val(node: object) -> object:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _storage(value: object) -> object:
    """A hashable identity of a (fake) tensor's storage, shared by its views."""
    return StorageWeakRef(value.untyped_storage()) if isinstance(value, torch.Tensor) else None


def _nbytes(value: object) -> int:
    return int(value.untyped_storage().nbytes()) if isinstance(value, torch.Tensor) else 0


@dataclass(frozen=True)
class _Handoff:
    """What the forward hands the backward: which backward inputs are activations (freed by the
    backward after their last use), their storage groups, and the bytes live at the forward's end."""

    activations: dict[str, str]  # backward input name -> the input standing for its storage
    forward_end_bytes: int
    donated_idxs: list[int]


def _handoff(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int) -> _Handoff:
    placeholders = fw.graph.find_nodes(op="placeholder")
    inputs = {_storage(_val(p)) for p in placeholders} - {None}
    outputs = _outputs(fw)
    user, saved = outputs[:num_fwd_outputs], outputs[num_fwd_outputs:]
    seen: set[object] = set()
    end_bytes = 0
    saved_names: set[str] = set()
    for position, node in enumerate((*user, *saved)):
        value = _val(node)
        storage = _storage(value)
        if storage is None or storage in inputs:
            continue  # a parameter, the batch, or a view of one: not activation memory
        if position >= len(user):
            saved_names.add(node.name)
        if storage not in seen:
            seen.add(storage)
            end_bytes += _nbytes(value)
    activations: dict[str, str] = {}
    owner: dict[object, str] = {}
    for p in bw.graph.find_nodes(op="placeholder"):
        if (p.name in saved_names or compat.is_tangent(p)) and isinstance(_val(p), torch.Tensor):
            activations[p.name] = owner.setdefault(_storage(_val(p)), p.name)
    donated = compat.fw_donated_buffer_idxs(
        [_val(p) for p in placeholders],
        [_val(n) for n in user],
        [_val(n) for n in _outputs(bw)],
        [_val(n) for n in saved],
    )
    return _Handoff(activations, end_bytes, donated)


def _replay(
    graph_inputs: dict[str, int], events: Sequence[compat.MemoryEvent], live_inputs: dict[str, str]
) -> tuple[int, int]:
    """(peak, bytes live at the start) of one graph's memory plan; ``live_inputs`` are the graph
    inputs that count (name -> the input standing for their storage), freed by the plan like any
    buffer."""
    storage_of: dict[str, int] = {}
    members: dict[int, set[str]] = {}
    size: dict[int, int] = {}
    next_id = iter(range(len(events) + len(live_inputs) + 1))

    def allocate(name: str, nbytes: int) -> None:
        release(name)  # a name Inductor allocates again is a new buffer
        sid = next(next_id)
        size[sid], members[sid], storage_of[name] = nbytes, {name}, sid

    def release(name: str) -> None:
        sid = storage_of.pop(name, None)
        if sid is not None:
            members[sid].discard(name)
            if not members[sid]:
                del size[sid], members[sid]

    for name, owner in live_inputs.items():
        if owner == name:
            allocate(name, graph_inputs.get(name, 0))
        elif owner in storage_of:
            storage_of[name] = storage_of[owner]
            members[storage_of[owner]].add(name)
    start = peak = sum(size.values())
    for event in events:
        if event.kind == "alloc":
            allocate(event.name, event.nbytes)
        elif event.kind == "reuse":
            sid = storage_of.get(event.other)
            if sid is None:  # reusing something not counted (a parameter): new memory to us
                allocate(event.name, graph_inputs.get(event.other, 0))
            else:
                storage_of[event.name] = sid
                members[sid].add(event.name)
                if event.drop_other:
                    storage_of.pop(event.other, None)
                    members[sid].discard(event.other)
        elif event.kind == "free":
            release(event.name)
        live = sum(size.values())
        scratch = workspace_bytes(event.origin) if event.kind == "call" and event.origin is not None else 0
        peak = max(peak, live + scratch)
    return peak, start


def inductor_step_peak(
    fw: fx.GraphModule,
    bw: fx.GraphModule,
    num_fwd_outputs: int,
    config_patches: dict[str, Any] | None = None,
    *,
    forward_bound: int | None = None,
    own_graphs: bool = False,
) -> InductorStepPeak:
    """The step's peak under Inductor's plan for the partitioned ``fw`` and ``bw`` (AOTAutograd's
    contract: ``fw``'s first ``num_fwd_outputs`` outputs are the user's, then the saved values), with
    the Inductor settings the real compile gets (``config_patches``). Raises whatever Inductor raises.

    ``forward_bound``, an upper bound on the forward's peak (the op-by-op model's: Inductor's fused
    forward materialises a subset of its buffers), lets a planner skip replaying the forward when the
    backward's replayed peak is already at least that high: the step peak is the backward's then, and
    the forward costs as much to replay as the backward. ``own_graphs``: the caller made ``fw`` and
    ``bw`` only for this, so Inductor's passes may rewrite them instead of copies.
    """
    handoff = _handoff(fw, bw, num_fwd_outputs)
    copy_graph = not own_graphs
    bw_inputs, bw_events = compat.inductor_memory_plan(
        bw,
        is_backward=True,
        donated_idxs=handoff.donated_idxs,
        config_patches=config_patches,
        copy_graph=copy_graph,
    )
    bw_peak, bw_start = _replay(bw_inputs, bw_events, handoff.activations)
    # the backward's peak above its start, on top of everything the forward left live
    backward = handoff.forward_end_bytes + bw_peak - bw_start
    if forward_bound is not None and backward >= forward_bound:
        fw_peak = forward_bound
    else:
        fw_inputs, fw_events = compat.inductor_memory_plan(
            fw, is_backward=False, config_patches=config_patches, copy_graph=copy_graph
        )
        fw_peak, _ = _replay(fw_inputs, fw_events, {})
    return InductorStepPeak(max(fw_peak, backward), fw_peak, backward, handoff.forward_end_bytes)
