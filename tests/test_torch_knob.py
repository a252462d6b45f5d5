"""torch's own budget knob as an explorer (passes/torch_knob.py): its plans join the pool, so a
budget-0 plan never peaks above any of them; a knob run that fails costs only its plans."""

from __future__ import annotations

import torch

import autoremat
import autoremat.passes.torch_knob as torch_knob
from autoremat.passes.pool import Pool
from tests.harness import EAGER_TOL, assert_steps_match, compiled_step, train_step
from tests.models import Transformer


def _plan(budget) -> autoremat.Plan:
    torch.manual_seed(0)
    model, inputs = Transformer(d=16, layers=2), (torch.randn(4, 32, 16, requires_grad=True),)
    autoremat.clear_plans()
    got = compiled_step(model, autoremat.backend(compiler="eager", memory_budget=budget), inputs)
    assert_steps_match(got, train_step(model, model, inputs), EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    return plan


def test_the_least_plan_peaks_no_higher_than_any_plan_of_torchs_knob(monkeypatch):
    added = []
    real_add = Pool.add

    def spy(self, cut, source, gap=None):
        candidate = real_add(self, cut, source, gap)
        if source == torch_knob.TorchKnobSolver.name:
            added.append(candidate.peak)
        return candidate

    monkeypatch.setattr(Pool, "add", spy)
    plan = _plan(0.0)
    assert len(added) == len(torch_knob.KNOB_VALUES)
    assert plan.predicted_peak_bytes <= min(added)


def test_a_failing_knob_run_costs_only_its_plans(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("torch's partitioner exploded")

    monkeypatch.setattr(torch_knob, "knob_saved_names", broken)
    plan = _plan(0.0)
    assert plan.solver != torch_knob.TorchKnobSolver.name and plan.status != "fallback"
    assert plan.predicted_peak_bytes <= plan.target_bytes
