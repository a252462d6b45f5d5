"""A factory for the CLI test: ``autoremat explain tests.explain_factory:make``."""

import torch
import torch.nn as nn


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        a = torch.relu(h)
        return self.fc2(a).sum()


def make():
    torch.manual_seed(0)
    return TwoLayer(), (torch.randn(8, 16),)
