"""One placement (docs/architecture.md, "One placement"): nodes whose second run would be wrong run
once, in the forward, whatever the budget and whichever solver planned; every part agrees on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoremat
from autoremat.cost_models import default_cost_model
from autoremat.cost_models.liveness import step_schedule
from autoremat.graph.analysis import analyse
from autoremat.graph.op_classes import OpClass
from autoremat.passes.cut import RecomputeRules, least_memory_rules
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.problem_builder import build_problem
from tests.harness import FP32_TOL, assert_steps_match, capture_joint, compiled_step, train_step


class SaveNoise(torch.autograd.Function):
    """Draws noise in the forward that only the backward reads (as a custom op might)."""

    @staticmethod
    def forward(ctx, x):
        noise = torch.rand_like(x)
        ctx.save_for_backward(noise)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (noise,) = ctx.saved_tensors
        return grad * noise


class NoiseAfterNoise(nn.Module):
    """A second draw after the backward-only one: drawing the first again in the backward (after the
    second advanced the generator) gives different numbers, so a misplaced draw shows in the grads.
    Both draws are plain ``aten.rand``, so eager and the codegen-free graphs draw the same numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        y = SaveNoise.apply(self.lin(x))
        return (y * torch.rand_like(y)).sum()


@pytest.mark.parametrize("budget", [1.0, 0.0], ids=["runtime-optimal", "least-memory"])
@pytest.mark.parametrize("solver", ["milp", "greedy"])
def test_random_value_read_only_by_the_backward_is_drawn_once_in_the_forward(budget, solver):
    torch.manual_seed(0)
    model = NoiseAfterNoise()
    x = torch.randn(8, 16, requires_grad=True)
    expected = train_step(model, model, (x,), seed=1)
    backend = autoremat.backend(compiler="eager", memory_budget=budget, solver=solver)
    assert_steps_match(compiled_step(model, backend, (x,), seed=1), expected, FP32_TOL)


def test_every_part_reads_the_same_placement():
    torch.manual_seed(0)
    joint = capture_joint(NoiseAfterNoise(), torch.randn(8, 16))
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    draws = [n for n, f in analysis.facts.items() if f.op_class is OpClass.RANDOM]
    assert len(draws) == 2
    assert set(draws) <= analysis.must_run_in_forward <= analysis.forward_nodes
    # the least-memory cut saves the draws; the memory model runs them in the forward only
    cut = solve_min_cut(analysis, least_memory_rules(RecomputeRules()))
    assert set(draws) <= set(cut.saved)
    schedule = step_schedule(analysis, cut.saved)
    assert set(draws) <= set(schedule.forward) and not set(draws) & set(schedule.backward)
    assert not set(draws) & set(analysis.recomputed(cut.saved))
    # the MILP may not recompute them either
    built = build_problem(analysis, default_cost_model(None).for_graph(analysis), cut.saved)
    assert all(not built.problem.can_recompute[built.nodes.index(d)] for d in draws)
