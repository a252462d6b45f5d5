"""Measure what this device actually achieves (matmul FLOP/s, copy bandwidth) in well under a second.

Datasheet peaks overstate achieved throughput by device-dependent factors (often 1.3–2× for
bandwidth, more for small CPU matmuls). Calibration replaces them with measured figures. Results are
cached on disk keyed by device name and torch version, so a training job pays the measurement once.
The calibration data enters the partitioner's cache key: a plan made with other numbers is not reused.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from dataclasses import asdict, dataclass, replace

import torch

from autoremat.cost_models.device_specs import DeviceSpec

#: Sizes chosen so each measurement takes milliseconds: large enough to reach steady-state
#: throughput, small enough that the whole calibration stays far below a second.
_CPU_MATMUL_N, _GPU_MATMUL_N = 384, 4096
#: Copies must overflow the last-level cache (hundreds of MiB on server CPUs) to measure DRAM/HBM.
_CPU_COPY_BYTES, _GPU_COPY_BYTES = 128 * 2**20, 512 * 2**20
#: Elements for the vector-throughput probe: small enough to stay in cache, so it measures arithmetic.
_VECTOR_ELEMENTS = 1 << 18
#: Repeats per measurement; the best (minimum) time is kept, the usual estimator of achievable speed.
_REPEATS = 5


@dataclass(frozen=True)
class Calibration:
    device_name: str
    torch_version: str
    fp32_flops: float
    bf16_flops: float
    bandwidth: float
    #: non-matmul arithmetic (FLOPs as flops.py counts them) per second
    vector_flops: float

    def fingerprint(self) -> str:
        return repr(sorted(asdict(self).items()))

    def apply(self, spec: DeviceSpec) -> DeviceSpec:
        """``spec`` with measured figures; dtypes we did not measure scale with the nearest measured one."""
        fp32_ratio = self.fp32_flops / spec.flops["fp32"]
        bf16_ratio = self.bf16_flops / spec.flops["bf16"]
        flops = {
            name: peak * (fp32_ratio if name in ("fp32", "tf32") else bf16_ratio)
            for name, peak in spec.flops.items()
        }
        flops["fp32"], flops["bf16"], flops["vector"] = self.fp32_flops, self.bf16_flops, self.vector_flops
        return replace(spec, name=f"{spec.name} (calibrated)", flops=flops, bandwidth=self.bandwidth)


def _cache_path() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "autoremat" / "calibration.json"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}threads-{torch.get_num_threads()}"


def _best_time(fn, device: torch.device) -> float:
    fn()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    n = _GPU_MATMUL_N if device.type == "cuda" else _CPU_MATMUL_N
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _best_time(lambda: torch.mm(a, b), device)


def _copy_bandwidth(device: torch.device) -> float:
    """Streaming copy into a reused buffer: DRAM/HBM bandwidth. (On CPU, writing a large *fresh*
    buffer also costs page faults, which this deliberately leaves out: it is an allocator effect the
    roofline does not model; see the cost-model benchmark's notes.)"""
    nbytes = _GPU_COPY_BYTES if device.type == "cuda" else _CPU_COPY_BYTES
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_time(lambda: dst.copy_(src), device)  # read + write


def _vector_flops(device: torch.device) -> float:
    """exp over an in-cache buffer: transcendental throughput, in the cost model's FLOP units."""
    from autoremat.cost_models.flops import TRANSCENDENTAL_FLOPS

    n = _VECTOR_ELEMENTS * (16 if device.type == "cuda" else 1)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return n * TRANSCENDENTAL_FLOPS / _best_time(lambda: torch.exp(src, out=dst), device)


def measure(device: torch.device) -> Calibration:
    """Run the measurements now (no cache)."""
    return Calibration(
        device_name=_device_name(device),
        torch_version=torch.__version__,
        fp32_flops=_matmul_flops(device, torch.float32),
        bf16_flops=_matmul_flops(device, torch.bfloat16),
        bandwidth=_copy_bandwidth(device),
        vector_flops=_vector_flops(device),
    )


def calibrate(device: torch.device | str | None = None, *, use_cache: bool = True) -> Calibration:
    """Achieved matmul FLOP/s and copy bandwidth of ``device`` (default: CUDA if present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    key = f"{_device_name(device)}|{torch.__version__}"
    path = _cache_path()
    cache: dict[str, dict] = {}
    if use_cache and path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}  # an unreadable cache is remeasured and rewritten
        try:
            if key in cache:
                return Calibration(**cache[key])
        except TypeError:
            pass  # written by another version of this class: measure again
    result = measure(device)
    if use_cache:
        cache[key] = asdict(result)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=2, sort_keys=True))
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return result
