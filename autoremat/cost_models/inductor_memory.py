"""The peak of a training step as Inductor will run it: a replay of the memory plan in the wrapper
Inductor generates for the forward and the backward graph (docs/architecture.md, "Memory under
Inductor").

The op-by-op model (``liveness.py``) is exact for the codegen-free compiler, but Inductor fuses kernels,
overwrites donated buffers in place and reuses buffers, and its peak moves. Replaying the wrapper's
allocations, reuses and frees, plus each extern kernel's scratch (``workspace.py``), matched the CPU
allocator's measured peak on every model and budget of the quick suite, resnet to a few bytes once the
replay followed Inductor's channels-last layouts: the backward lowered with the strides the forward
returns its saved values in, the forward's channels-last copies of saved parameters counted as
activations, and convolution scratch for the layouts the kernels really get.
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
    #: whether the forward was replayed; False when ``forward_bound`` stood in for its peak
    forward_replayed: bool = True
    #: whether the forward had to be replayed whatever its bound (layout optimisation: the backward
    #: is lowered with the strides the forward returns)
    forward_required: bool = False

    def needs_forward(self, forward_bound: int | None) -> bool:
        """Whether a replay on ``forward_bound`` replays the forward (``inductor_step_peak``): unless
        the backward's peak already reaches the bound, or the forward was replayed first anyway."""
        return not self.forward_required and (
            forward_bound is None or self.backward_peak_bytes < forward_bound
        )

    def on_bound(self, forward_bound: int | None, forward_peak: int | None) -> InductorStepPeak:
        """What ``inductor_step_peak`` returns on ``forward_bound``, made from this replay on bound 0
        (the backward alone, and the forward where ``forward_required``) and the forward's peak
        replayed apart (``inductor_forward_peak``; None: not replayed, for a bound that spares it).
        A planner that measured a plan before it held its bound decides on that bound when it asks,
        as a replay then would have."""
        if self.forward_required:
            return self
        backward = self.backward_peak_bytes
        if not self.needs_forward(forward_bound):
            return InductorStepPeak(
                backward, forward_bound, backward, self.forward_end_bytes, forward_replayed=False
            )
        if forward_peak is None:
            raise ValueError(
                f"forward_bound={forward_bound} is above the backward's peak: the forward's is needed"
            )
        return InductorStepPeak(max(forward_peak, backward), forward_peak, backward, self.forward_end_bytes)


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
class _Returned:
    """Where one forward output lives when the forward returns: ``storage`` identifies the storage
    (shared by views), None for a parameter, the batch or a view of one (not activation memory);
    ``stride`` is the compiled forward's where known, None to go by the FX metadata."""

    storage: object
    nbytes: int = 0
    stride: tuple[int, ...] | None = None


def _returned_by_fx(fw: fx.GraphModule) -> list[_Returned]:
    """The forward's outputs as its FX metadata says: exact when Inductor keeps the graph's layouts."""
    inputs = {_storage(_val(p)) for p in fw.graph.find_nodes(op="placeholder")} - {None}
    returned = []
    for node in _outputs(fw):
        value = _val(node)
        storage = _storage(value)
        activation = storage is not None and storage not in inputs
        returned.append(_Returned(storage, _nbytes(value)) if activation else _Returned(None))
    return returned


def _returned_by_inductor(
    fw_inputs: dict[str, int], events: Sequence[compat.MemoryEvent], count: int
) -> list[_Returned]:
    """The forward's outputs as Inductor's lowered forward returns them (its ``"output"`` events).

    Under layout optimisation they differ from the FX graph's: saved activations come back
    channels-last, and a saved parameter or batch feeding a convolution (an input in FX, so no
    activation) comes back as a new channels-last copy, live until the backward's last use of it."""
    outputs = [e for e in events if e.kind == "output"]
    if len(outputs) != count:
        raise ValueError(f"Inductor's forward returns {len(outputs)} values, its FX graph {count}")
    returned = []
    for event in outputs:
        layout = event.layouts[0] if event.layouts else None
        stride = layout[1] if layout is not None else None
        fresh = bool(event.name) and event.name not in fw_inputs
        returned.append(_Returned(event.name if fresh else None, event.nbytes, stride))
    return returned


@dataclass(frozen=True)
class _Handoff:
    """What the forward hands the backward: which backward inputs are activations (freed by the
    backward after their last use), their storage groups, the bytes live at the forward's end, and
    the strides the backward's inputs arrive in."""

    activations: dict[str, str]  # backward input name -> the input standing for its storage
    forward_end_bytes: int
    input_strides: list[tuple[int, ...] | None]  # per backward placeholder; None: the metadata's


def _handoff(
    output_names: Sequence[str | None], returned: Sequence[_Returned], bw: fx.GraphModule
) -> _Handoff:
    """The handoff of a forward whose outputs (FX names ``output_names``, the user's then the saved
    values) live where ``returned`` says; every storage counts once."""
    by_name = {name: r for name, r in zip(output_names, returned, strict=True) if name is not None}
    end_bytes = sum({r.storage: r.nbytes for r in returned if r.storage is not None}.values())
    activations: dict[str, str] = {}
    owner: dict[object, str] = {}
    strides: list[tuple[int, ...] | None] = []
    for p in bw.graph.find_nodes(op="placeholder"):
        saved = by_name.get(p.name)
        strides.append(saved.stride if saved is not None else None)
        if saved is not None and saved.storage is not None:
            activations[p.name] = owner.setdefault(saved.storage, p.name)
        elif compat.is_tangent(p) and isinstance(_val(p), torch.Tensor):
            activations[p.name] = owner.setdefault(_storage(_val(p)), p.name)
    return _Handoff(activations, end_bytes, strides)


def _donated_idxs(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int) -> list[int]:
    """The backward inputs AOTAutograd lets Inductor overwrite, from the FX metadata as it does."""
    outputs = _outputs(fw)
    return compat.fw_donated_buffer_idxs(
        [_val(p) for p in fw.graph.find_nodes(op="placeholder")],
        [_val(n) for n in outputs[:num_fwd_outputs]],
        [_val(n) for n in _outputs(bw)],
        [_val(n) for n in outputs[num_fwd_outputs:]],
    )


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
        peak = max(peak, sum(size.values()) + _scratch(event))
    return peak, start


def _scratch(event: compat.MemoryEvent) -> int:
    """Scratch of an extern kernel's call, for its inputs as Inductor lays them out."""
    if event.kind != "call" or event.origin is None:
        return 0
    return workspace_bytes(event.origin, event.layouts)


def _replay_forward(
    fw: fx.GraphModule, config_patches: dict[str, Any] | None, copy_graph: bool, num_outputs: int
) -> tuple[int, list[_Returned]]:
    """The forward's peak under Inductor's plan, and its outputs as the lowered forward returns them."""
    fw_inputs, fw_events = compat.inductor_memory_plan(
        fw, is_backward=False, config_patches=config_patches, copy_graph=copy_graph
    )
    peak, _ = _replay(fw_inputs, fw_events, {})
    return peak, _returned_by_inductor(fw_inputs, fw_events, num_outputs)


def inductor_forward_peak(
    fw: fx.GraphModule, config_patches: dict[str, Any] | None = None, *, own_graphs: bool = False
) -> int:
    """The forward's peak under Inductor's plan alone: for a plan whose backward was replayed by
    ``inductor_step_peak`` with an estimate standing in for its forward (``forward_bound``), the
    half of the replay that is missing, at half its cost."""
    peak, _ = _replay_forward(fw, config_patches, not own_graphs, len(_outputs(fw)))
    return peak


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
    forward materialises a subset of its buffers) or a planner's estimate of it, lets a planner skip
    replaying the forward when the backward's replayed peak is already at least that high: the step
    peak is the backward's then, and the forward costs as much to replay as the backward.
    ``own_graphs``: the caller made ``fw`` and
    ``bw`` only for this, so Inductor's passes may rewrite them instead of copies.

    Where Inductor re-lays out the forward's values (layout optimisation: CPU convolutions run
    channels-last), the forward is replayed first and the backward is lowered with its saved inputs in
    the strides the forward returns them in, as AOTAutograd compiles it.
    """
    copy_graph = not own_graphs
    # read from the FX graphs before a lowering may rewrite them (``own_graphs``)
    output_names = [n.name if isinstance(n, fx.Node) else None for n in _outputs(fw)]
    returned = _returned_by_fx(fw)
    donated = _donated_idxs(fw, bw, num_fwd_outputs)
    fw_peak = None
    required = compat.inductor_layout_optimisation(fw, config_patches)
    if required:
        # lowered with the FX metadata's strides, the backward would plan copies the real one never makes
        fw_peak, returned = _replay_forward(fw, config_patches, copy_graph, len(output_names))
    handoff = _handoff(output_names, returned, bw)
    bw_inputs, bw_events = compat.inductor_memory_plan(
        bw,
        is_backward=True,
        donated_idxs=donated,
        config_patches=config_patches,
        copy_graph=copy_graph,
        input_strides=handoff.input_strides,
    )
    bw_peak, bw_start = _replay(bw_inputs, bw_events, handoff.activations)
    # the backward's peak above its start, on top of everything the forward left live
    backward = handoff.forward_end_bytes + bw_peak - bw_start
    if fw_peak is not None:  # replayed first (layout optimisation)
        return InductorStepPeak(
            max(fw_peak, backward), fw_peak, backward, handoff.forward_end_bytes, forward_required=True
        )
    # the backward's replay alone, read on the bound as a check that measured it ahead reads it
    alone = InductorStepPeak(backward, 0, backward, handoff.forward_end_bytes, forward_replayed=False)
    if alone.needs_forward(forward_bound):
        fw_peak, _ = _replay_forward(fw, config_patches, copy_graph, len(output_names))
    return alone.on_bound(forward_bound, fw_peak)
