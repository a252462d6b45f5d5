"""A byte budget under dynamic shapes: planned at the declared maximum, and never silently exceeded
by a size larger than the one it was planned at (issue "Correct at every budget", item 5)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import autoremat

WIDTH = 32


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh())


def _step(compiled, rows: int) -> None:
    compiled(torch.randn(rows, WIDTH)).sum().backward()


def _plan_for(rows: int, *, max_rows: int | None, dynamic: bool) -> autoremat.Plan:
    torch.compiler.reset()
    autoremat.clear_plans()
    x = torch.randn(rows, WIDTH)
    if dynamic:
        torch._dynamo.mark_dynamic(x, 0, min=2, max=max_rows)
    compiled = torch.compile(_model(), backend=autoremat.backend(compiler="eager", memory_budget="64MiB"))
    compiled(x).sum().backward()
    (plan,) = autoremat.recent_plans()
    return plan


def test_byte_budget_is_planned_at_the_declared_maximum():
    bounded = _plan_for(8, max_rows=64, dynamic=True)
    assert any("declared maximum 64" in note for note in bounded.notes), bounded.notes
    # the peak is predicted at 64 rows: the same as a static compile at 64 rows, above one at 8
    assert bounded.predicted_peak_bytes == _plan_for(64, max_rows=None, dynamic=False).predicted_peak_bytes
    assert bounded.predicted_peak_bytes > _plan_for(8, max_rows=None, dynamic=False).predicted_peak_bytes


def test_a_size_above_the_planned_one_warns_once():
    torch.compiler.reset()
    x = torch.randn(8, WIDTH)
    torch._dynamo.mark_dynamic(x, 0)
    compiled = torch.compile(_model(), backend=autoremat.backend(compiler="eager", memory_budget="64MiB"))
    compiled(x).sum().backward()
    (plan,) = autoremat.recent_plans()[-1:]
    assert any("no maximum was declared" in note for note in plan.notes), plan.notes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _step(compiled, 8)
        assert not caught, [str(w.message) for w in caught]
        _step(compiled, 32)
        _step(compiled, 40)
    messages = [str(w.message) for w in caught if "autoremat" in str(w.message)]
    assert len(messages) == 1 and "=32 is above the 8" in messages[0], messages


@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_fraction_budgets_do_not_warn(budget):
    torch.compiler.reset()
    x = torch.randn(8, WIDTH)
    torch._dynamo.mark_dynamic(x, 0)
    compiled = torch.compile(_model(), backend=autoremat.backend(compiler="eager", memory_budget=budget))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(x).sum().backward()
        _step(compiled, 64)
    assert not [w for w in caught if "autoremat" in str(w.message)]
