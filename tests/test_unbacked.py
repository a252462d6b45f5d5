"""Unbacked sizes (issue 14, item 4): a graph whose sizes are known only at run time (``nonzero``,
``.item()``) is planned by autoremat at a stated bound, not handed to torch's partitioner."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoremat
from autoremat import _torch_compat as compat
from tests.harness import FP32_TOL, assert_steps_match, compiled_step, train_step

#: features of the toy model: small, so each compile is quick
WIDTH = 8
#: rows of the batch: the bound ``nonzero`` of one column gets
ROWS = 16


class SelectRows(nn.Module):
    """Keeps the rows whose first feature is positive (``nonzero``: a size bounded by ``ROWS``) and
    pads with ``.item()`` rows of ones (a size with no upper bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.lin(x))
        rows = torch.nonzero(x[:, 0] > 0).squeeze(1)
        picked = torch.sigmoid(h[rows]) * torch.exp(h[rows])
        extra = torch.ones(count.sum().item(), WIDTH) * h.mean()
        return picked.sum() + torch.cos(extra).sum()


@pytest.fixture
def capture_unbacked():
    """Let Dynamo trace ``.item()`` and ``nonzero`` into the graph instead of breaking it there.
    (``config.patch``, not monkeypatch: torch's config module refuses monkeypatch's restore.)"""
    with torch._dynamo.config.patch(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True):
        yield


@pytest.mark.usefixtures("capture_unbacked")
def test_unbacked_sizes_are_planned_at_a_stated_bound():
    torch.manual_seed(0)
    model = SelectRows()
    inputs = (torch.randn(ROWS, WIDTH, requires_grad=True), torch.tensor([2, 3]))
    expected = train_step(model, model, inputs)
    got = compiled_step(model, autoremat.backend(compiler="eager", memory_budget=0.0), inputs)
    assert_steps_match(got, expected, FP32_TOL)
    plans = autoremat.recent_plans()
    assert plans and all(p.status != "fallback" for p in plans), [p.notes for p in plans]
    notes = " | ".join(note for p in plans for note in p.notes)
    assert f"upper bound {ROWS}" in notes, notes  # nonzero's size: at most one per row
    fallback = compat.inductor_config.unbacked_symint_fallback
    assert f"planned at {fallback}: it has no finite upper bound" in notes, notes  # the .item() size
