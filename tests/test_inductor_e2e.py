"""True end-to-end: torch.compile(backend="autoremat") through Inductor's C++ codegen on this CPU."""

from __future__ import annotations

import pytest
import torch

import autoremat
from tests.harness import EAGER_TOL, assert_steps_match, compiled_step, train_step
from tests.models import MLP, DropoutProbe, Transformer, check_dropout_mask_consistent


@pytest.fixture(autouse=True)
def _no_inductor_cache():
    # A cache hit skips the partitioner; these tests must see it run.
    with torch.compiler.config.patch(force_disable_caches=True):
        yield


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("mlp", lambda: (MLP(d=32, depth=3), torch.randn(8, 32, requires_grad=True))),
        (
            "transformer_sdpa",
            lambda: (Transformer(d=32, layers=1), torch.randn(2, 16, 32, requires_grad=True)),
        ),
    ],
)
def test_inductor_gradients_match_eager(name, make):
    torch.manual_seed(0)
    model, x = make()
    got = compiled_step(model, "autoremat", (x,), options={"memory_budget": 0.5})
    assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
    plans = autoremat.recent_plans()
    assert plans and all(p.status != "fallback" for p in plans)


@pytest.mark.parametrize("budget", [1.0, 0.0])
def test_inductor_dropout_mask_is_replayed_exactly(budget):
    torch.manual_seed(0)
    model = DropoutProbe().train()
    compiled = torch.compile(model, backend=autoremat.backend(memory_budget=budget))
    check_dropout_mask_consistent(model, compiled, torch.randn(8, 16, requires_grad=True))
    (plan,) = autoremat.recent_plans()
    if budget == 0.0:
        # Inductor's seeded random op is recomputed from its saved seed rather than saving the mask.
        assert any(r.op.startswith("inductor_random") for r in plan.recomputed), plan.recomputed
