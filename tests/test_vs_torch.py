"""At budget 1.0 autoremat saves no more activation bytes than torch's default partitioner.

Both partitioners run on the same joint graphs (same decompositions, codegen-free), and the bytes are
measured, not predicted: saved-tensor hooks total the unique storages each compiled forward keeps.
"""

from __future__ import annotations

import pytest
import torch

import autoremat
from autoremat import _torch_compat as compat
from autoremat.backend import codegen_free_backend
from autoremat.demo.model import GPT, GPTConfig, example_batch
from autoremat.measure import measure_saved_bytes
from tests.models import MLP, ConvNet, Transformer


def _saved_bytes(model, backend, inputs) -> int:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    exclude = [*model.parameters(), *model.buffers(), *inputs]
    loss, saved = measure_saved_bytes(lambda: compiled(*inputs), exclude)
    loss.backward()
    return saved.nbytes


def _cases():
    torch.manual_seed(0)
    gpt_cfg = GPTConfig(vocab_size=128, block_size=32, n_layer=2, n_head=4, d_model=32)
    return {
        "mlp": (MLP(d=64, depth=4), (torch.randn(16, 64, requires_grad=True),)),
        "transformer": (Transformer(d=32, layers=2), (torch.randn(4, 16, 32, requires_grad=True),)),
        "gpt": (GPT(gpt_cfg), example_batch(gpt_cfg, 4, 32)),
        "convnet": (ConvNet(c=8), (torch.randn(4, 3, 16, 16, requires_grad=True),)),
        # regression: a loss target is a graph input; saving it must not count as activation memory
        "mlp_mse_target": (MSEChain(), (torch.randn(16, 32), torch.randn(16, 32))),
    }


class MSEChain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return torch.nn.functional.mse_loss(x, y)


@pytest.mark.parametrize("name", ["mlp", "transformer", "gpt", "convnet", "mlp_mse_target"])
def test_budget_one_saves_no_more_than_torch(name, capsys):
    model, inputs = _cases()[name]
    torch_bytes = _saved_bytes(model, codegen_free_backend(compat.torch_min_cut_partition), inputs)
    ours = _saved_bytes(model, autoremat.backend(compiler="eager", memory_budget=1.0), inputs)
    (plan,) = autoremat.recent_plans()
    with capsys.disabled():
        print(f"\n[saved bytes] {name}: torch={torch_bytes} autoremat={ours} ratio={ours / torch_bytes:.2f}")
    assert plan.saved_bytes == ours, "the plan's predicted activation bytes should match measurement"
    assert ours <= torch_bytes
