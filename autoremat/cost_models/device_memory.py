"""How many bytes ``memory_budget="auto"`` may plan for: what the device has free right now.

On CUDA that is the driver's free memory plus what PyTorch's caching allocator holds but does not
use, less a headroom for fragmentation and for allocations outside the compiled graph (optimizer
state created on the first step, NCCL buffers). On CPU the "device" is host RAM shared with data
loading and other processes, so only half of what the kernel reports available is claimed.

The value is read when a graph is partitioned (parameters exist by then; gradients may not), so it
answers "how much activation memory can this step use", not "how much will be free later". A compiled
graph loaded from Inductor's cache keeps the plan made when it was compiled.
"""

from __future__ import annotations

import os

import torch

#: fraction of free CUDA memory the step's activations may use: the rest absorbs fragmentation and
#: allocations the graph does not see (optimizer state, communication buffers)
CUDA_HEADROOM = 0.9
#: fraction of available host RAM a CPU step may use: RAM is shared with the data pipeline and any
#: other ranks on the machine
CPU_SHARE = 0.5


def available_bytes(device: torch.device | None) -> int:
    """Bytes ``memory_budget="auto"`` resolves to on ``device`` (see the module docstring)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + max(cached, 0)) * CUDA_HEADROOM)
    return int(_host_available_bytes() * CPU_SHARE)


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 0
