"""What the peak model counts (issue 14, item 6; docs/architecture.md, "Memory"):

- the tangents: a compiled block that is not the last one receives an incoming gradient as large as
  its output, created by autograd during the step and live through the block's backward;
- a saved chunk of a multi-output view (``split``) keeps its whole base alive, and the solvers' byte
  charge and the liveness model agree on that.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn

import autoremat
from autoremat.cost_models import default_cost_model
from autoremat.cost_models.liveness import plan_peak
from autoremat.graph.analysis import analyse
from autoremat.measure import cpu_peak_bytes
from autoremat.passes.budget_problem import modelled_backward
from autoremat.passes.cut import RecomputeRules, least_memory_rules
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.problem_builder import build_problem
from tests.harness import capture_joint

#: rows and features of the block: its output (the tangent's size) is 512 KiB, far above noise
ROWS, WIDTH = 512, 256
#: the codegen-free path runs exactly the modelled schedule, so the model is exact up to allocator
#: rounding of a few bytes
EXACT = 0.01


class Block(nn.Module):
    """A block whose output is an activation, not a loss: its backward receives a full-size gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x)).sin()


def _analysis(model: nn.Module, *inputs: torch.Tensor):
    joint = capture_joint(model, *inputs)
    return analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )


@pytest.mark.parametrize("budget", [1.0, 0.0])
def test_incoming_gradient_counts_in_the_predicted_peak(budget):
    torch.manual_seed(0)
    model, x = Block(), torch.randn(ROWS, WIDTH, requires_grad=True)
    compiled = torch.compile(model, backend=autoremat.backend(compiler="eager", memory_budget=budget))
    out = compiled(x)
    out.backward(torch.ones_like(out))
    (plan,) = autoremat.recent_plans()

    def step() -> None:
        out = compiled(x)
        out.backward(torch.randn_like(out))  # the next block's gradient, created during the step

    measured = cpu_peak_bytes(step)
    assert plan.predicted_peak_bytes == pytest.approx(measured, rel=EXACT), plan.summary()


def test_the_milp_backward_profile_counts_the_tangent_like_the_liveness_model():
    torch.manual_seed(0)
    analysis = _analysis(Block(), torch.randn(ROWS, WIDTH, requires_grad=True))
    costs = default_cost_model(None).for_graph(analysis)
    fast = solve_min_cut(analysis)
    small = solve_min_cut(analysis, least_memory_rules(RecomputeRules()))
    built = build_problem(analysis, costs, fast.saved)
    for cut in (fast, small):  # the reference plan and another one
        saved = {built.nodes.index(n) for n in cut.saved if n in built.nodes}
        modelled = max(modelled_backward(built.problem, saved))
        assert modelled >= plan_peak(analysis, cut.saved).backward_peak_bytes


class SavedChunk(nn.Module):
    """The backward reads one ``split`` chunk (the weight's gradient is ``grad * first``), so the forward
    saves the chunk, which keeps its whole base alive."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, 2 * WIDTH)
        self.scale = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.lin(x).split(WIDTH, dim=-1)
        return (first * self.scale).sum() + second.sum()


def test_saved_split_chunk_is_charged_its_base_by_solvers_and_liveness_alike():
    torch.manual_seed(0)
    analysis = _analysis(SavedChunk(), torch.randn(ROWS, WIDTH, requires_grad=True))
    cut = solve_min_cut(analysis)
    chunks = [n for n in cut.saved if n.target is operator.getitem]
    assert chunks, [n.name for n in cut.saved]  # the case under test: a chunk is saved
    base_bytes = ROWS * 2 * WIDTH * 4
    for chunk in chunks:
        assert analysis.facts[chunk].save_bytes == base_bytes
    # the solver's charge for the saved set (one per storage) is what the forward leaves alive
    bases = {analysis.facts[n].storage_base for n in cut.saved}
    charged = sum(analysis.facts[b].save_bytes for b in bases if b.op != "placeholder")
    loss_bytes = 4  # the forward's one output: a float32 scalar
    assert plan_peak(analysis, cut.saved).forward_end_bytes == charged + loss_bytes
