"""Benchmark models, defined here (no downloads): each has a CPU-sized and a GPU-sized configuration.

Every model computes its own scalar loss in ``forward`` and keeps its repeated blocks in
``self.blocks`` so the per-layer checkpointing strategy can wrap exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from autoremat.demo.model import GPT, GPTConfig, example_batch


class Checkpointable(nn.Module):
    """Runs ``self.blocks`` plainly, or each under non-reentrant ``torch.utils.checkpoint``."""

    checkpoint_blocks = False

    def run_blocks(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpoint_blocks:
                x = checkpoint(block, x, *extra, use_reentrant=False)
            else:
                x = block(x, *extra)
        return x


class GPT2(Checkpointable):
    """The demo GPT (learned positions, GELU MLP, LayerNorm, causal SDPA, optional dropout)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gpt = GPT(cfg)
        self.blocks = self.gpt.blocks

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        g = self.gpt
        x = g.tok(idx) + g.pos(torch.arange(idx.shape[1], device=idx.device))
        x = self.run_blocks(x)
        return F.cross_entropy(g.head(g.ln_f(x)).flatten(0, 1), targets.flatten())


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class LlamaBlock(nn.Module):
    """RMSNorm, RoPE, grouped-query attention, SwiGLU."""

    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(b, t, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(Checkpointable):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, kv_heads: int, seq: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(LlamaBlock(d, heads, kv_heads, 4 * d) for _ in range(layers))
        self.norm, self.head = RMSNorm(d), nn.Linear(d, vocab, bias=False)
        hd = d // heads
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(seq).float(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.run_blocks(self.emb(idx), self.cos[:t], self.sin[:t])
        return F.cross_entropy(self.head(self.norm(x)).flatten(0, 1), targets.flatten())


class MLPBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class DeepMLP(Checkpointable):
    """A long chain of equal layers: the classic sqrt(n) checkpointing case."""

    def __init__(self, d: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MLPBlock(d) for _ in range(layers))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.run_blocks(x), y)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNet(Checkpointable):
    def __init__(self, c: int, blocks: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList(ResBlock(c) for _ in range(blocks))
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.run_blocks(self.stem(x))
        return F.cross_entropy(self.fc(h.mean((2, 3))), y)


class LongContext(Checkpointable):
    """Few wide-sequence attention blocks: activation memory dominated by sequence length."""

    def __init__(self, d: int, layers: int, heads: int) -> None:
        super().__init__()
        cfg = GPTConfig(vocab_size=2, block_size=2, n_layer=layers, n_head=heads, d_model=d)
        self.blocks = GPT(cfg).blocks
        self.inp, self.out = nn.Linear(d, d), nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.out(self.run_blocks(self.inp(x))).squeeze(-1), y)


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.device], tuple[torch.Tensor, ...]]


def _gpt_case(name: str, cfg: GPTConfig, batch: int, seq: int) -> ModelCase:
    return ModelCase(
        name, lambda: GPT2(cfg), lambda dev: tuple(t.to(dev) for t in example_batch(cfg, batch, seq))
    )


def _tokens(vocab: int, batch: int, seq: int) -> Callable[[torch.device], tuple[torch.Tensor, ...]]:
    def make(device: torch.device) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, vocab, (batch, seq + 1), generator=gen).to(device)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    return make


#: the suite's sizes: (width scale, repeated blocks, batch/token scale). "smoke" is for tests, "quick"
#: runs on this CPU in minutes, "act" keeps quick's widths but has 16x the tokens so that activations,
#: not weights and gradients, dominate the step's memory (as in real training; about a minute a case
#: under Inductor on 2 cores), "cpu" and "gpu" are wider and deeper.
PROFILES = {
    "smoke": (1, 1, 1),
    "quick": (1, 2, 1),
    "act": (1, 2, 16),
    "cpu": (2, 2, 1),
    "gpu": (8, 4, 1),
}


def suite(profile: str) -> list[ModelCase]:
    """The five models at the size of ``profile`` (see ``PROFILES``)."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is invalid: expected one of {tuple(PROFILES)}")
    s, depth, t = PROFILES[profile]
    seq = 64 * s * (4 if t > 1 else 1)  # more tokens: 4x longer sequences, the rest in the batch
    batch = 4 * s * t * 64 * s // seq
    gpt = GPTConfig(vocab_size=512 * s, block_size=seq, n_layer=depth, n_head=4, d_model=64 * s)
    mlp_layers, mlp_d = (2 if profile == "smoke" else 8 * depth), 128 * s
    return [
        _gpt_case("gpt2", gpt, batch, seq),
        ModelCase("llama", lambda: Llama(512 * s, 64 * s, depth, 4, 2, seq), _tokens(512 * s, batch, seq)),
        ModelCase(
            "deep_mlp",
            lambda: DeepMLP(mlp_d, mlp_layers),
            lambda dev: (
                torch.randn(64 * s * t, mlp_d, device=dev),
                torch.randn(64 * s * t, mlp_d, device=dev),
            ),
        ),
        ModelCase(
            "resnet",
            lambda: ResNet(16 * s, 2 * depth),
            lambda dev: (
                torch.randn(8 * s * t, 3, 16 * s, 16 * s, device=dev),
                torch.randint(0, 10, (8 * s * t,), device=dev),
            ),
        ),
        ModelCase(
            "long_context",
            lambda: LongContext(32 * s, depth, 4),
            lambda dev: (
                torch.randn(1, 512 * s * t, 32 * s, device=dev),
                torch.randn(1, 512 * s * t, device=dev),
            ),
        ),
    ]


def case_by_name(profile: str, name: str) -> ModelCase:
    for case in suite(profile):
        if case.name == name:
            return case
    raise ValueError(f"unknown benchmark model {name!r}: choose from {[c.name for c in suite(profile)]}")


__all__ = ["ModelCase", "case_by_name", "suite"]
