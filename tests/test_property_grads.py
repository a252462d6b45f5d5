"""Property: on generated models, autoremat's compiled gradients equal eager PyTorch's at every budget.

The models include the hazards of issue 14 (random values only the backward reads, inputs mutated
after use, saved chunks of multi-output views, bf16 autocast, graph breaks; ``random_models.py``).
The reference is eager PyTorch itself, never torch's own partitioners (which share our placement and
so its mistakes): the generated random draws (``rand_like``, ``F.dropout``) come in a fixed order,
which eager and the codegen-free graphs draw identically.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import autoremat
from tests.harness import BF16_TOL, EAGER_TOL, assert_steps_match, compiled_step, train_step
from tests.random_models import RandomModel, model_specs

#: examples per run at least (the issue's floor), more under a larger profile (HYPOTHESIS_PROFILE=dev)
MIN_EXAMPLES = 200
#: steps per generated model: enough for every pair of hazards to meet, small enough that 200
#: compiles fit the test's 90 s share of CI on 2 cores
MAX_STEPS = 5


@settings(max_examples=max(MIN_EXAMPLES, settings.default.max_examples))
@given(
    spec=model_specs(max_steps=MAX_STEPS, extended=True),
    budget=st.sampled_from((1.0, 0.5, 0.0)),
    seed=st.integers(0, 2**16),
)
def test_compiled_gradients_match_eager(spec, budget, seed):
    torch.manual_seed(seed)
    model = RandomModel(spec).train()
    x = torch.randn(spec.batch, spec.seq, spec.dim, requires_grad=True)
    aux = torch.randn(spec.batch, spec.seq, spec.dim)  # a fresh copy per step (train_step clones)
    expected = train_step(model, model, (x, aux), seed)
    autoremat.clear_plans()
    got = compiled_step(model, autoremat.backend(compiler="eager", memory_budget=budget), (x, aux), seed)
    plans = autoremat.recent_plans()
    assert plans, "autoremat's partitioner was never called"
    assert all(p.status != "fallback" for p in plans), [p.notes for p in plans]
    assert_steps_match(got, expected, BF16_TOL if spec.autocast else EAGER_TOL)
