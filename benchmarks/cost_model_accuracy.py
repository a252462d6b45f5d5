"""How well the cost model predicts real kernel times on this device.

    python -m benchmarks.cost_model_accuracy [--device cpu|cuda] [--spec NAME]

~20 ops and fused chains of various sizes are compiled with Inductor and timed (median of repeats);
the cost model predicts each from its FX graph (roofline per kernel, Inductor-style fusion groups),
once with datasheet peaks and once calibrated. Prints a markdown table and, per variant, the Spearman
rank correlation and the median |log2(predicted / measured)|.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch.fx.experimental.proxy_tensor import make_fx

from autoremat import _torch_compat as compat
from autoremat.cost_models import calibrate, spec_for_device, spec_for_name
from autoremat.cost_models.device_specs import DeviceSpec
from autoremat.cost_models.flops import hint
from autoremat.cost_models.fusion import kernel_time, kernels
from autoremat.cost_models.roofline import node_cost
from autoremat.graph.op_classes import classify


@dataclass
class Case:
    name: str
    fn: Callable[..., torch.Tensor]
    shapes: list[tuple[int, ...]]
    dtype: torch.dtype = torch.float32


def gelu_chain(x):
    return x * 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))


def cases(scale: int) -> list[Case]:
    """Sizes grow with ``scale`` (1 on CPU, 8 on GPU) so each case takes well over a launch."""
    s = scale
    bf16 = torch.bfloat16
    return [
        Case("mm 256", torch.mm, [(256 * s, 256 * s), (256 * s, 256 * s)]),
        Case("mm 512", torch.mm, [(512 * s, 512 * s), (512 * s, 512 * s)]),
        Case("mm 1024x256x1024", torch.mm, [(1024 * s, 256 * s), (256 * s, 1024 * s)]),
        Case("mm 512 bf16", torch.mm, [(512 * s, 512 * s), (512 * s, 512 * s)], bf16),
        Case("bmm 16x128", torch.bmm, [(16, 128 * s, 64 * s), (16, 64 * s, 128 * s)]),
        Case("linear+gelu", lambda x, w: F.gelu(x @ w), [(1024 * s, 256), (256, 1024)]),
        Case("conv 3x3 small", lambda x, w: F.conv2d(x, w, padding=1), [(8, 16, 32, 32), (32, 16, 3, 3)]),
        Case("conv 3x3 wide", lambda x, w: F.conv2d(x, w, padding=1), [(8, 64, 32, 32), (64, 64, 3, 3)]),
        Case("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(4, 8, 256 * s, 64)] * 3),
        Case(
            "sdpa causal",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            [(4, 8, 256 * s, 64)] * 3,
        ),
        Case("add 1M", torch.add, [(1 << 20,) * 1, (1 << 20,)]),
        Case("add 16M", torch.add, [(16 << 20,), (16 << 20,)]),
        Case("relu 4M", torch.relu, [(4 << 20,)]),
        Case("gelu chain 1M", gelu_chain, [(1 << 20,)]),
        Case("gelu chain 16M", gelu_chain, [(16 << 20,)]),
        Case("gelu chain 4M bf16", gelu_chain, [(4 << 20,)], bf16),
        Case("sum rows 4096x1024", lambda x: x.sum(-1), [(4096, 1024 * s)]),
        Case("softmax 4096x1024", lambda x: torch.softmax(x, -1), [(4096, 1024 * s)]),
        Case("layer norm 4096x1024", lambda x: F.layer_norm(x, (x.shape[-1],)), [(4096, 1024 * s)]),
        Case(
            "residual+layernorm",
            lambda x, r: F.layer_norm(x + r, (x.shape[-1],)),
            [(4096, 1024 * s), (4096, 1024 * s)],
        ),
    ]


def predict(case: Case, inputs: list[torch.Tensor], spec: DeviceSpec) -> float:
    gm = make_fx(case.fn, tracing_mode="fake")(*inputs)
    costs = {n: node_cost(n, classify(n)) for n in gm.graph.nodes if n.op not in ("output",)}
    compute_nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    hints = compat.graph_symbol_hints(gm.graph)
    return sum(hint(kernel_time(k, costs, spec), hints) for k in kernels(compute_nodes, costs))


def measure(case: Case, inputs: list[torch.Tensor], device: torch.device, budget_s: float = 0.3) -> float:
    compiled = torch.compile(case.fn, backend="inductor")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        compiled(*inputs)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        compiled(*inputs)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def summary(pred: list[float], meas: list[float]) -> tuple[float, float]:
    rho = spearmanr(pred, meas).statistic
    log_err = statistics.median(abs(math.log2(p / m)) for p, m in zip(pred, meas, strict=True))
    return float(rho), log_err


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--spec", default=None, help="device spec name (default: from the device)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    datasheet = spec_for_name(args.spec) if args.spec else spec_for_device(device)
    cal = calibrate(device)
    calibrated = cal.apply(datasheet)
    scale = 8 if device.type == "cuda" else 1
    print(f"device {device} ({cal.device_name}), spec {datasheet.name}, torch {torch.__version__}")
    print(
        f"calibrated: fp32 {cal.fp32_flops / 1e9:.1f} GFLOP/s, bf16 {cal.bf16_flops / 1e9:.1f} "
        f"GFLOP/s, copy {cal.bandwidth / 1e9:.1f} GB/s\n"
    )
    print("| case | measured ms | datasheet ms | ratio | calibrated ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for case in cases(scale):
        torch.manual_seed(0)
        inputs = [torch.randn(s, device=device, dtype=case.dtype) for s in case.shapes]
        measured = measure(case, inputs, device)
        p_ds, p_cal = predict(case, inputs, datasheet), predict(case, inputs, calibrated)
        rows.append((measured, p_ds, p_cal))
        print(
            f"| {case.name} | {measured * 1e3:.3f} | {p_ds * 1e3:.3f} | {p_ds / measured:.2f} | "
            f"{p_cal * 1e3:.3f} | {p_cal / measured:.2f} |",
            flush=True,
        )
    meas = [r[0] for r in rows]
    for label, idx in (("datasheet", 1), ("calibrated", 2)):
        rho, err = summary([r[idx] for r in rows], meas)
        print(f"\n{label}: Spearman {rho:.3f}, median |log2(pred/measured)| {err:.2f}", end="")
    print()


if __name__ == "__main__":
    main()
