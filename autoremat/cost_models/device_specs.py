"""Datasheet peaks of the devices we plan for, and how a graph's device maps to one of them.

Numbers are dense (no structured sparsity) vendor datasheet peaks; achieved throughput is lower, which
is what calibration (``calibration.py``) measures. A plan can target another device than the one
compiling (``device="h100"``: plan for an H100 on a laptop).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

log = logging.getLogger("autoremat")

TERA = 1e12
GIGA = 1e9

#: Host-side cost of launching one GPU kernel from a compiled graph (CUDA launch latency plus the
#: wrapper's bookkeeping): a few microseconds on current drivers; this is the figure commonly measured
#: for back-to-back small kernels on A100/H100.
GPU_LAUNCH_S = 4e-6
#: A CPU "kernel" is a loop nest called from the generated C++ wrapper; calling one costs about a
#: microsecond (OpenMP region entry dominates).
CPU_LAUNCH_S = 1e-6


@dataclass(frozen=True)
class DeviceSpec:
    """Peak arithmetic per dtype (FLOP/s), memory bandwidth (bytes/s) and per-kernel launch cost."""

    name: str
    family: str
    flops: dict[str, float] = field(hash=False)
    bandwidth: float = 0.0
    launch_s: float = GPU_LAUNCH_S

    def peak_flops(self, dtype: torch.dtype, *, tensor_core: bool) -> float:
        """Peak for ``dtype``; fp32 matmuls use TF32 tensor cores when torch allows it.

        Everything that is not a matmul runs on the vector units in fp32 (Inductor upcasts bf16
        pointwise maths), whatever the tensors' dtype.
        """
        if not tensor_core:
            return self.flops.get("vector", self.flops["fp32"])
        if dtype in (torch.bfloat16, torch.float16):
            return self.flops["bf16"]
        if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return self.flops.get("fp8", self.flops["bf16"])
        if tensor_core and dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
            return self.flops.get("tf32", self.flops["fp32"])
        return self.flops["fp32"]

    def fingerprint(self) -> str:
        return repr((self.name, sorted(self.flops.items()), self.bandwidth, self.launch_s))


def _gpu(name: str, family: str, fp32: float, tf32: float, bf16: float, fp8: float | None, tbps: float):
    flops = {"fp32": fp32 * TERA, "tf32": tf32 * TERA, "bf16": bf16 * TERA}
    if fp8 is not None:
        flops["fp8"] = fp8 * TERA
    return DeviceSpec(name, family, flops, tbps * TERA)


SPECS: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        _gpu("a100-40gb", "ampere", 19.5, 156, 312, None, 1.555),
        _gpu("a100-80gb", "ampere", 19.5, 156, 312, None, 2.039),
        _gpu("h100-sxm", "hopper", 67, 494.7, 989.4, 1978.9, 3.35),
        _gpu("h100-pcie", "hopper", 51, 378, 756, 1513, 2.0),
        _gpu("h200", "hopper", 67, 494.7, 989.4, 1978.9, 4.8),
        _gpu("l4", "ada", 30.3, 60, 121, 242, 0.3),
        _gpu("l40s", "ada", 91.6, 183, 362, 733, 0.864),
        _gpu("rtx-4090", "ada", 82.6, 82.6, 165.2, 330.3, 1.008),
        # A modest x86 server slice (a few AVX2/AVX-512 cores): FMA peak for BLAS, a quarter of it for
        # generated loops (no FMA pairing, gathers, tails). Calibrate for real figures.
        DeviceSpec(
            "cpu",
            "cpu",
            {"fp32": 200 * GIGA, "bf16": 100 * GIGA, "vector": 50 * GIGA},
            20 * GIGA,
            CPU_LAUNCH_S,
        ),
    )
}

_ALIASES = {
    "h100": "h100-sxm",
    "a100": "a100-80gb",
    "4090": "rtx-4090",
    "rtx4090": "rtx-4090",
}

#: Name fragments → family default, for GPUs we have no row for (newest of each family).
_FAMILY_DEFAULTS = (
    (re.compile(r"h200|gh200"), "h200"),
    (re.compile(r"h100|h800|hopper"), "h100-sxm"),
    (re.compile(r"a100|a800|a30|a10\b|a40|ampere"), "a100-80gb"),
    (re.compile(r"l40|6000 ada"), "l40s"),
    (re.compile(r"\bl4\b"), "l4"),
    (re.compile(r"rtx ?40\d\d|ada"), "rtx-4090"),
)


def spec_names() -> tuple[str, ...]:
    return tuple(SPECS) + tuple(_ALIASES)


def spec_for_name(name: str) -> DeviceSpec:
    """Our spec for a user option or a driver-reported GPU name; unknown → nearest family, warned."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in SPECS:
        return SPECS[key]
    normalised = key.replace("nvidia", "").replace("-", " ").strip()
    if "h100" in normalised and "pcie" in normalised:
        return SPECS["h100-pcie"]
    if "a100" in normalised and "40" in normalised:
        return SPECS["a100-40gb"]
    for pattern, spec_name in _FAMILY_DEFAULTS:
        if pattern.search(normalised):
            if spec_name not in normalised.replace(" ", "-"):
                log.info("autoremat: device %r planned with the %s spec", name, spec_name)
            return SPECS[spec_name]
    fallback = "cpu" if "cpu" in normalised else "h100-sxm"
    log.warning("autoremat: unknown device %r; planning with the %s spec", name, fallback)
    return SPECS[fallback]


def spec_for_device(device: torch.device | None) -> DeviceSpec:
    """The spec matching a graph's device (CPU for CPU graphs, the driver's name for CUDA)."""
    if device is None or device.type != "cuda":
        return SPECS["cpu"]
    return spec_for_name(torch.cuda.get_device_name(device))
