"""A graph input mutated in the forward after it was read (issue 14, item 2): the backward must not
recompute from it, because by then the forward's ``copy_`` has overwritten it (docs/architecture.md,
"One placement")."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoremat
from autoremat.cost_models import default_cost_model
from autoremat.cost_models.liveness import step_schedule
from autoremat.graph.analysis import analyse
from autoremat.passes.cut import RecomputeRules, least_memory_rules
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.problem_builder import build_problem
from tests.harness import FP32_TOL, capture_joint

#: features of the toy model: small, so each compile is quick
WIDTH = 8


class MutateAfterRead(nn.Module):
    """Reads ``aux`` (directly, or through a view), then scales it in place. ``sin(aux)`` is cheap and
    costs no bytes to rebuild from the (free) input, so every budget would recompute it from ``aux`` in
    the backward, after the forward has overwritten ``aux``."""

    def __init__(self, through_view: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.through_view = through_view

    def forward(self, x: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        source = aux.view(-1).view(aux.shape) if self.through_view else aux
        y = self.lin(x) * torch.sin(source)
        aux.mul_(-2)
        return y.sum()


def _step(model: nn.Module, fn, x: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
    """Loss, input and parameter gradients, and the mutated input after one step."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    aux = aux.clone()
    loss = fn(x, aux)
    loss.backward()
    return [loss.detach(), x.grad, *(p.grad for p in model.parameters()), aux]


@pytest.mark.parametrize("through_view", [False, True], ids=["direct", "view"])
@pytest.mark.parametrize("budget", [1.0, 0.5, 0.0])
def test_backward_does_not_recompute_from_an_input_mutated_by_the_forward(budget, through_view):
    torch.manual_seed(0)
    model = MutateAfterRead(through_view)
    x, aux = torch.randn(4, WIDTH), torch.randn(4, WIDTH)
    expected = _step(model, model, x, aux)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=autoremat.backend(compiler="eager", memory_budget=budget))
    got = _step(model, compiled, x, aux)
    plans = autoremat.recent_plans()
    assert plans and all(p.status != "fallback" for p in plans), [p.notes for p in plans]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **FP32_TOL)


def test_every_part_keeps_the_reader_of_a_mutated_input_in_the_forward():
    torch.manual_seed(0)
    joint = capture_joint(MutateAfterRead(through_view=False), torch.randn(4, WIDTH), torch.randn(4, WIDTH))
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    (sin,) = [n for n in analysis.facts if n.target is torch.ops.aten.sin.default]
    assert "mutates" in (analysis.facts[sin].never_recompute or "")
    assert sin in analysis.must_run_in_forward
    cut = solve_min_cut(analysis, least_memory_rules(RecomputeRules()))
    assert sin in cut.saved and sin not in analysis.recomputed(cut.saved)
    assert sin not in step_schedule(analysis, cut.saved).backward
    built = build_problem(analysis, default_cost_model(None).for_graph(analysis), cut.saved)
    assert not built.problem.can_recompute[built.nodes.index(sin)]
