"""Cost model specification: FLOPs, bytes and roofline times against hand-computed values."""

from __future__ import annotations

import logging

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from autoremat import _torch_compat as compat
from autoremat.cost_models import SPECS, CostModel, calibrate, calibration, spec_for_name
from autoremat.cost_models.flops import TRANSCENDENTAL_FLOPS, hint, node_flops_expr
from autoremat.cost_models.fusion import recompute_time
from autoremat.cost_models.roofline import node_cost
from autoremat.graph.analysis import analyse
from autoremat.graph.op_classes import OpClass, classify
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner
from autoremat.passes.cut import RecomputeRules, cheap_by
from autoremat.passes.mincut import solve_min_cut
from tests.harness import capture_joint
from tests.random_models import RandomModel, model_specs

H100 = SPECS["h100-sxm"]


def trace(fn, *inputs, mode="fake"):
    return make_fx(fn, tracing_mode=mode)(*inputs)


def op_node(gm, packet):
    return next(n for n in gm.graph.nodes if getattr(n.target, "overloadpacket", None) is packet)


def cost_of(gm, packet):
    node = op_node(gm, packet)
    return node, node_cost(node, classify(node))


def test_mm_flops_bytes_and_roofline_time():
    m, k, n = 64, 128, 32
    gm = trace(torch.mm, torch.randn(m, k), torch.randn(k, n))
    _, cost = cost_of(gm, torch.ops.aten.mm)
    assert cost.flops == 2 * m * k * n
    assert cost.bytes_read == 4 * (m * k + k * n) and cost.bytes_written == 4 * m * n
    compute = 2 * m * k * n / H100.flops["fp32"]
    memory = 4 * (m * k + k * n + m * n) / H100.bandwidth
    assert float(cost.standalone_s(H100)) == pytest.approx(H100.launch_s + max(compute, memory))


def test_addmm_and_bmm_flops():
    gm = trace(torch.addmm, torch.randn(8), torch.randn(4, 16), torch.randn(16, 8))
    assert op_node(gm, torch.ops.aten.addmm) and cost_of(gm, torch.ops.aten.addmm)[1].flops == 2 * 4 * 16 * 8
    gm = trace(torch.bmm, torch.randn(3, 4, 16), torch.randn(3, 16, 8))
    assert cost_of(gm, torch.ops.aten.bmm)[1].flops == 2 * 3 * 4 * 16 * 8


def test_convolution_flops():
    x, w = torch.randn(2, 3, 10, 10), torch.randn(8, 3, 3, 3)
    gm = trace(lambda a, b: F.conv2d(a, b, padding=1), x, w)
    # one multiply-add (2 FLOPs) per output element per input channel per kernel tap
    assert cost_of(gm, torch.ops.aten.convolution)[1].flops == 2 * (2 * 8 * 10 * 10) * 3 * 3 * 3


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_flops_causal_and_not(causal):
    b, h, s, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    gm = trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v)
    node = next(n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target))
    full = 2 * b * h * s * s * (d + d)  # QK^T and PV
    assert node_flops_expr(node) == (full // 2 if causal else full)


def test_layer_norm_and_softmax_are_memory_bound_reductions():
    x = torch.randn(32, 64)
    gm = trace(lambda t: F.layer_norm(t, (64,)), x)
    _, ln = cost_of(gm, torch.ops.aten.native_layer_norm)
    assert ln.bytes_read == 32 * 64 * 4
    assert ln.bytes_written == (32 * 64 + 2 * 32) * 4  # output, mean, rstd
    assert ln.flops == 32 * 64 + 2 * 32  # one op per output element
    gm = trace(lambda t: torch.softmax(t, -1), x)
    _, sm = cost_of(gm, torch.ops.aten._softmax)
    assert sm.bytes_read == sm.bytes_written == 32 * 64 * 4
    memory = 2 * 32 * 64 * 4 / H100.bandwidth
    assert float(sm.standalone_s(H100)) == pytest.approx(H100.launch_s + memory)


def test_pointwise_chain_fused_costs_one_read_unfused_costs_every_kernel():
    x = torch.randn(1024)
    gm = trace(lambda t: (t * 2).exp() + 1, x)
    chain = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(chain) == 3
    costs = {n: node_cost(n, classify(n)) for n in gm.graph.nodes if n.op != "output"}
    fused = float(recompute_time(chain, costs, H100))
    # Inside one backward kernel the chain reads x once and its result stays in registers; each op
    # still does its arithmetic: 1024 elements at 1 (mul), TRANSCENDENTAL_FLOPS (exp), 1 (add) FLOPs.
    per_op = [1024 * w / H100.flops["fp32"] for w in (1, TRANSCENDENTAL_FLOPS, 1)]
    assert fused == pytest.approx(max(per_op[0], 4096 / H100.bandwidth) + per_op[1] + per_op[2])
    unfused = sum(float(costs[n].standalone_s(H100)) for n in chain)
    expected = sum(H100.launch_s + max(c, 2 * 4096 / H100.bandwidth) for c in per_op)
    assert unfused == pytest.approx(expected)
    assert fused < unfused / 10


def test_bf16_matmul_uses_bf16_peak_and_half_the_bytes():
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    _, fp32 = cost_of(trace(torch.mm, a, b), torch.ops.aten.mm)
    _, bf16 = cost_of(trace(torch.mm, a.bfloat16(), b.bfloat16()), torch.ops.aten.mm)
    assert bf16.bytes_read * 2 == fp32.bytes_read
    assert float(bf16.compute_s(H100)) == pytest.approx(2 * 512**3 / H100.flops["bf16"])
    assert float(bf16.compute_s(H100)) < float(fp32.compute_s(H100)) / 10


def test_symbolic_cost_is_an_expression_that_evaluates_for_two_hints():
    gm = trace(torch.mm, torch.randn(6, 8), torch.randn(8, 5), mode="symbolic")
    node = op_node(gm, torch.ops.aten.mm)
    flops = node_flops_expr(node)
    symbols = sorted(flops.free_symbols, key=str)
    assert len(symbols) == 3, flops
    hints = compat.graph_symbol_hints(gm.graph)
    assert hint(flops, hints) == 2 * 6 * 8 * 5
    # the same expression at other sizes: m=10, k=8, n=3 in whatever order the symbols were bound
    values = {s: hints[s] for s in symbols}
    m_sym = next(s for s in symbols if values[s] == 6)
    n_sym = next(s for s in symbols if values[s] == 5)
    assert hint(flops, {**values, m_sym: 10, n_sym: 3}) == 2 * 10 * 8 * 3
    time_expr = node_cost(node, classify(node)).standalone_s(H100)
    assert isinstance(time_expr, sympy.Expr) and time_expr.free_symbols


@pytest.mark.parametrize(
    ("reported", "spec"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("h100", "h100-sxm"),
    ],
)
def test_device_names_map_to_specs(reported, spec):
    assert spec_for_name(reported).name == spec


def test_unknown_gpu_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        assert spec_for_name("Imaginary GPU 9000").name == "h100-sxm"
    assert "unknown device 'Imaginary GPU 9000'" in caplog.text


def test_device_option_is_validated():
    assert resolve_options({"device": "H100"}).device == "h100"
    with pytest.raises(ValueError, match="device='tpu-v5'.*'h200'"):
        resolve_options({"device": "tpu-v5"})
    with pytest.raises(ValueError, match="calibrate=True"):
        resolve_options({"device": "h100", "calibrate": True})


def test_calibration_measures_once_then_comes_from_the_cache_and_enters_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []
    real_measure = calibration.measure
    monkeypatch.setattr(
        calibration, "measure", lambda device: measured.append(device) or real_measure(device)
    )
    first = calibrate("cpu")
    assert len(measured) == 1
    assert first.fp32_flops > 1e8 and first.bandwidth > 1e8  # any CPU this decade does better

    def no_measuring(device):
        raise AssertionError("calibration should have come from the cache")

    monkeypatch.setattr(calibration, "measure", no_measuring)
    assert calibrate("cpu") == first
    assert (tmp_path / "autoremat" / "calibration.json").exists()

    plain = RematPartitioner(resolve_options({}))
    calibrated = RematPartitioner(resolve_options({"calibrate": True}), torch.device("cpu"))
    assert calibrated.calibration == first and plain.uuid() != calibrated.uuid()
    spec = first.apply(SPECS["cpu"])
    assert spec.flops["fp32"] == first.fp32_flops and spec.bandwidth == first.bandwidth


def test_attention_without_dropout_is_not_random():
    """Regression: SDPA kernels carry the nondeterministic_seeded tag for their optional dropout; with
    dropout_p == 0 they are deterministic matmul work and may be recomputed."""
    q = torch.randn(1, 2, 8, 4)
    gm = trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, q, q)
    node = next(n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target))
    assert classify(node) is OpClass.COMPUTE_INTENSIVE
    node.args = (*node.args[:3], 0.5)  # the same kernel asked to drop out
    assert classify(node) is OpClass.RANDOM


@settings(max_examples=30)
@given(
    spec=model_specs(max_steps=6), seed=st.integers(0, 1000), device=st.sampled_from(["cpu", "h100", "l4"])
)
def test_cost_model_rules_never_save_more_than_class_rules(spec, seed, device):
    """The cost model may only widen the cheap set, so the budget-1.0 cut can only get smaller."""
    torch.manual_seed(seed)
    model = RandomModel(spec)
    joint = capture_joint(model, torch.randn(spec.batch, spec.seq, spec.dim, requires_grad=True))
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    costs = CostModel(spec_for_name(device)).for_graph(analysis)
    by_model = solve_min_cut(analysis, cheap_by(analysis, costs.is_cheap_to_recompute))
    by_class = solve_min_cut(analysis, RecomputeRules())
    assert by_model.cut_bytes <= by_class.cut_bytes
