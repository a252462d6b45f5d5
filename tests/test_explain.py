"""autoremat.explain, its CLI, and plans that survive Inductor's caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import autoremat
from autoremat.explain import Report
from tests.explain_factory import make
from tests.models import ConvNet


def test_report_names_saved_tensors_with_source_lines():
    model, inputs = make()
    report = autoremat.explain(model, *inputs, memory_budget=1.0)
    (plan,) = report.plans
    saved = {v.op: v for v in plan.saved}
    # fc2's weight gradient needs relu's output; relu is the latest value that provides it.
    assert "relu.default" in saved and saved["relu.default"].shape == ("8", "32")
    assert (
        "explain_factory.py" in saved["relu.default"].source
        and "torch.relu(h)" in saved["relu.default"].source
    )
    assert plan.recomputed == [] and plan.optimality_gap == 0.0
    text = str(report)
    assert "relu.default" in text and "nothing is recomputed" in text


def test_least_memory_report_recomputes_the_matmul():
    # Deep enough that recomputation lowers the peak (on a two-layer net it cannot: the peak is in
    # the backward, where a recomputed value would be live anyway).
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU()) for _ in range(6))
    )
    x = torch.randn(256, 32)
    (high,) = autoremat.explain(model, x, memory_budget=1.0).plans
    (plan,) = autoremat.explain(model, x, memory_budget=0.0).plans
    ops = {r.op for r in plan.recomputed}
    assert {"addmm.default", "relu.default"} <= ops, ops
    assert plan.predicted_peak_bytes < high.predicted_peak_bytes and plan.saved_bytes < high.saved_bytes
    assert plan.predicted_overhead_s > 0
    assert all(
        r.predicted_s is not None and r.predicted_s > 0 for r in plan.recomputed if r.op != "permute.default"
    )
    text = str(autoremat.explain(model, x, memory_budget=0.0))
    assert "peak" in text


def test_json_round_trip():
    model, inputs = make()
    report = autoremat.explain(model, *inputs, memory_budget=0.5)
    again = Report.from_json(report.to_json())
    assert again == report and again.to_json() == report.to_json()


def test_explain_restores_buffers():
    model = ConvNet().train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    autoremat.explain(model, torch.randn(2, 3, 8, 8))
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, before[name], msg=name)


def test_pareto_sweep_is_monotone_and_plots(tmp_path):
    model, inputs = make()
    report = autoremat.explain(model, *inputs)
    path = tmp_path / "pareto.png"
    points = report.pareto([1.0, 0.5, 0.0], path=str(path))
    assert [p.budget for p in points] == ["1.0", "0.5", "0.0"]
    assert points[0].peak_bytes >= points[1].peak_bytes >= points[2].peak_bytes > 0
    assert points[0].predicted_recompute_s <= points[2].predicted_recompute_s
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_needs_a_live_report():
    model, inputs = make()
    loaded = Report.from_json(autoremat.explain(model, *inputs).to_json())
    with pytest.raises(ValueError, match="loaded from JSON"):
        loaded.pareto()


def test_cli_explain_writes_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "r.json", tmp_path / "p.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoremat",
            "explain",
            "tests.explain_factory:make",
            "--budget",
            "0.5",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--sweep",
            "1.0",
            "0.0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| saved | op |" in result.stdout
    assert json.loads(out_json.read_text())["plans"][0]["budget"] == "0.5"
    assert out_png.stat().st_size > 1000


def test_cli_rejects_a_bad_factory():
    result = subprocess.run(
        [sys.executable, "-m", "autoremat", "explain", "no_such_module"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "MODULE:FACTORY" in result.stderr


WARM_CACHE_SCRIPT = textwrap.dedent(
    """
    import json, torch, autoremat
    from tests.explain_factory import make
    model, (x,) = make()
    x.requires_grad_(True)
    compiled = torch.compile(model, backend="autoremat", options={"memory_budget": 0.5})
    compiled(x).backward()
    print(json.dumps([[p.from_cache, [v.name for v in p.saved]] for p in autoremat.recent_plans()]))
    """
)


def test_plan_is_reported_on_a_warm_cache_in_a_second_process(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": os.getcwd()}
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", WARM_CACHE_SCRIPT], capture_output=True, text=True, timeout=300, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    (cold,), (warm,) = runs
    assert cold[0] is False and warm[0] is True, "the second process should hit Inductor's cache"
    assert warm[1] == cold[1]


def test_a_plan_faster_than_budget_one_reads_as_such_not_as_a_negative_overhead():
    """Issue 13: a budget plan can beat the budget-1.0 plan on both peak and time (another search
    found it); explain said "overhead -0.006 ms"."""
    from autoremat.explain import _plan_lines
    from autoremat.plan import Plan

    def plan(recompute_s: float) -> Plan:
        runtime_optimal_s = 2.26e-5 + 0.0057e-3
        return Plan(
            "0.75", "milp", "optimal", [], 0, [], 10, 0.0, "cpu", recompute_s, None, [], runtime_optimal_s
        )

    faster = "\n".join(_plan_lines(0, plan(2.26e-5)))
    line = next(x for x in faster.splitlines() if "recompute time:" in x)
    assert "0.006 ms less than the budget-1.0 plan" in line and "overhead" not in line and "-0" not in line
    slower = "\n".join(_plan_lines(0, plan(3e-5)))
    assert "overhead vs runtime-optimal: 0.002 ms" in slower
