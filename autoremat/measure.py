"""Measurements shared by the demo, the benchmarks and the tests.

Saved activation bytes are measured the same way for every strategy (eager, checkpointing, any
compiled backend): ``torch.autograd.graph.saved_tensors_hooks`` sees each tensor autograd keeps for the
backward, including those a compiled graph saves through its autograd.Function. Storages are counted
once and anything aliasing a parameter, buffer or input is excluded (docs/architecture.md, "Memory").
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


@dataclass
class SavedBytes:
    """Unique activation storages saved for backward during one forward."""

    nbytes: int = 0
    count: int = 0


def measure_saved_bytes(
    forward: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor]
) -> tuple[torch.Tensor, SavedBytes]:
    """Run ``forward`` and total the unique storages it saves, excluding ``exclude``'s storages."""
    excluded = {_storage_key(t) for t in exclude}
    seen: set[tuple[str, int]] = set()
    result = SavedBytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = _storage_key(t)
            if key not in excluded and key not in seen and key[1] != 0:
                seen.add(key)
                result.nbytes += t.untyped_storage().nbytes()
                result.count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, result


def max_relative_error(
    actual: Iterable[torch.Tensor | None], expected: Iterable[torch.Tensor | None]
) -> float:
    """Largest |a-e| / (|e|_max + tiny) over pairs of tensors; inf when one side is missing."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a is None and e is None:
            continue
        if a is None or e is None:
            return float("inf")
        a, e = a.detach().double(), e.detach().double()
        scale = e.abs().max().item() + 1e-12
        worst = max(worst, (a - e).abs().max().item() / scale)
    return worst


def median_seconds(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` (CPU timing; synchronises CUDA when present)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


@dataclass
class CapturedJoint:
    """A joint graph exactly as AOTAutograd hands it to a partitioner, with the call's arguments."""

    gm: fx.GraphModule
    joint_inputs: list[object]
    num_fwd_outputs: int
    static_lifetime_input_indices: list[int]

    def fresh_copy(self) -> fx.GraphModule:
        """Partitioners mutate the graph (DCE, CSE); each run gets its own copy."""
        return copy.deepcopy(self.gm)


def capture_joint_graphs(model: Callable[..., object], *inputs: torch.Tensor) -> list[CapturedJoint]:
    """The joint graphs (one per Dynamo graph) of ``model(*inputs)``, codegen-free decompositions."""
    from autoremat.backend import codegen_free_backend

    captured: list[CapturedJoint] = []

    def grab(gm, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **kwargs):
        static = list(static_lifetime_input_indices or [])
        captured.append(CapturedJoint(copy.deepcopy(gm), list(joint_inputs), num_fwd_outputs, static))
        return compat.torch_default_partition(
            gm, joint_inputs, num_fwd_outputs=num_fwd_outputs, static_lifetime_input_indices=static
        )

    torch.compiler.reset()
    torch.compile(model, backend=codegen_free_backend(grab))(*inputs)
    return captured


def step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of one ``step`` above what was allocated before it: CUDA's
    ``max_memory_allocated`` on a CUDA device, else the CPU allocator's (``cpu_peak_bytes``)."""
    if device.type != "cuda":
        return cpu_peak_bytes(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def cpu_peak_bytes(step: Callable[[], object]) -> int:
    """Peak of live CPU allocator bytes during ``step``, above what was live when it started.

    Replays the allocator's ``[memory]`` events of ``torch.profiler`` (allocations positive, frees
    negative) in order into a running total.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for _, nbytes in sorted(compat.profiler_memory_events(prof)):
        live += nbytes
        peak = max(peak, live)
    return peak
