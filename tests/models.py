"""Small named models shared by the contract, comparison and end-to-end tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, d: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(F.gelu(layer(x)))
        return x.square().mean()


class TransformerBlock(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + F.dropout(self.proj(a), self.dropout, self.training)
        return x + F.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), self.dropout, self.training)


class Transformer(nn.Module):
    def __init__(self, d: int = 32, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(TransformerBlock(d, dropout=dropout) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).square().mean()


class ConvNet(nn.Module):
    """Conv + BatchNorm (training mode mutates running stats: input mutations in the graph)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y))) + y
        return y.mean()


class DropoutProbe(nn.Module):
    """y = dropout(gelu(x @ W1)) @ W2 with W2 invertible, so the forward's mask is recoverable from y.

    W2.grad = dropout_out^T @ dL/dy; if the backward used a different mask, W2.grad disagrees with the
    dropout output reconstructed from the forward's y.
    """

    def __init__(self, d: int = 16, p: float = 0.5) -> None:
        super().__init__()
        self.p = p
        self.w1 = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.w2 = nn.Parameter(torch.eye(d) + 0.1 * torch.randn(d, d) / d**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.gelu(x @ self.w1), self.p, self.training) @ self.w2


def check_dropout_mask_consistent(model: DropoutProbe, compiled, x: torch.Tensor) -> None:
    """Assert the backward saw the same dropout output as the forward (see DropoutProbe)."""
    model.zero_grad(set_to_none=True)
    y = compiled(x)
    y.sum().backward()
    dropped = torch.linalg.solve(model.w2.detach().double().T, y.detach().double().T).T
    expected_w2_grad = dropped.sum(0, keepdim=True).T.expand_as(model.w2).double()
    assert (dropped.abs() < 1e-6).any(), "dropout dropped nothing: the probe proves nothing"
    torch.testing.assert_close(model.w2.grad.double(), expected_w2_grad, rtol=1e-4, atol=1e-4)
