"""Hypothesis strategies that generate small training models as random DAGs of common ops.

A model is a list of steps over a pool of values shaped (B, T, D); every step reads one or two pool
values and appends one. The ops cover what transformer and MLP training graphs contain: linear/matmul,
pointwise, reductions, views/reshapes/transposes, layer norm, softmax, SDPA, residual adds, in-place
updates and dropout.

``model_specs(extended=True)`` adds the hazards of issue 14 (item 12), each of which once gave wrong
gradients or a silent fallback:

- random values only the backward reads (a custom ``autograd.Function`` saving ``rand_like`` noise);
- a graph input (``aux``, the model's second argument) read, then mutated in place;
- saved chunks of multi-output views (``chunk``, ``unbind``);
- bf16 autocast around the whole forward;
- graph breaks (several compiled graphs; every graph but the last receives a full-size gradient).

Its random draws (``rand_like``, and ``F.dropout``, which the codegen-free path traces as eager's own
``bernoulli`` draw) come in a fixed order that eager PyTorch and the codegen-free graphs draw
identically, so such models are compared with eager directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

UNARY = (
    "linear",
    "matmul",
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "rownorm",
    "mean_center",
    "view_roundtrip",
    "transpose_scale",
    "layernorm",
    "softmax",
    "inplace",
    "dropout",
    "exp_clamped",
)
BINARY = ("add", "mul", "sdpa")
#: ops only ``model_specs(extended=True)`` generates (see the module docstring)
EXTENDED = (
    "noise_for_backward",
    "rand_dropout",
    "mutate_aux",
    "chunk_mix",
    "unbind_mix",
    "graph_break",
)
#: ops whose random draws differ between eager and the codegen-free path (none since that path
#: traces random ops as eager's kernels; the hook stays for ops a future torch decomposes differently)
NOT_EAGER_REPRODUCIBLE: tuple[str, ...] = ()


class SaveNoise(torch.autograd.Function):
    """Draws noise in the forward that only the backward reads (as a custom op might)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand_like(x)
        ctx.save_for_backward(noise)
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (noise,) = ctx.saved_tensors
        return grad * noise


@dataclass(frozen=True)
class Step:
    op: str
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    batch: int
    seq: int
    dim: int
    steps: tuple[Step, ...]
    dropout_p: float
    #: run the forward under CPU bf16 autocast
    autocast: bool = False

    @property
    def has_dropout(self) -> bool:
        return any(s.op == "dropout" for s in self.steps)


@st.composite
def model_specs(
    draw: st.DrawFn, max_steps: int = 8, allow_dropout: bool = True, extended: bool = False
) -> ModelSpec:
    ops = UNARY + BINARY if allow_dropout else tuple(o for o in UNARY + BINARY if o != "dropout")
    if extended:
        ops = tuple(o for o in ops if o not in NOT_EAGER_REPRODUCIBLE) + EXTENDED
    n = draw(st.integers(1, max_steps))
    steps = []
    for i in range(n):
        op = draw(st.sampled_from(ops))
        pool = i + 1
        arity = 2 if op in BINARY else 1
        inputs = tuple(draw(st.integers(0, pool - 1)) for _ in range(arity))
        steps.append(Step(op, inputs))
    return ModelSpec(
        batch=draw(st.integers(1, 3)),
        seq=draw(st.integers(1, 5)),
        dim=draw(st.sampled_from((2, 4, 6, 8))),
        steps=tuple(steps),
        dropout_p=draw(st.sampled_from((0.25, 0.5))),
        autocast=extended and draw(st.booleans()),
    )


class RandomModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.layers = nn.ModuleDict()
        self.weights = nn.ParameterDict()
        for i, step in enumerate(spec.steps):
            if step.op == "linear":
                self.layers[str(i)] = nn.Linear(d, d)
            elif step.op == "layernorm":
                self.layers[str(i)] = nn.LayerNorm(d)
            elif step.op in ("matmul", "transpose_scale"):
                shape = (d, d) if step.op == "matmul" else (d,)
                self.weights[str(i)] = nn.Parameter(torch.randn(shape) / d**0.5)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """``aux`` (shaped like ``x``, no gradient) is the input ``mutate_aux`` steps read and mutate."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.spec.autocast):
            s = self.spec
            pool = [x]
            for i, step in enumerate(s.steps):
                a = pool[step.inputs[0]]
                b = pool[step.inputs[1]] if len(step.inputs) > 1 else None
                pool.append(self._apply(i, step.op, a, b, aux))
            return sum(v.float().square().mean() for v in pool[1:]) + pool[-1].float().sum()

    def _apply(
        self, i: int, op: str, a: torch.Tensor, b: torch.Tensor | None, aux: torch.Tensor | None
    ) -> torch.Tensor:
        s, key = self.spec, str(i)
        if op == "noise_for_backward":
            return SaveNoise.apply(a)
        if op == "rand_dropout":  # dropout from one plain rand_like draw (reproducible, see above)
            keep = torch.rand_like(a) >= s.dropout_p
            return a * keep / (1 - s.dropout_p)
        if op == "mutate_aux":  # read the input, then overwrite it (the backward must not re-read it)
            assert aux is not None, "mutate_aux needs the model's second input"
            y = a * torch.sin(aux).to(a.dtype)
            aux.mul_(-0.5)
            return y
        if op == "chunk_mix":  # the backward reads chunks of a multi-output view
            first, second = a.chunk(2, dim=-1)
            return torch.cat([first * second, second.tanh()], dim=-1)
        if op == "unbind_mix":
            rows = a.unbind(1)
            return torch.stack([r * rows[0] for r in rows], dim=1)
        if op == "graph_break":
            torch._dynamo.graph_break()
            return a.cos()
        if op in ("linear", "layernorm"):
            return self.layers[key](a)
        if op == "matmul":
            return a @ self.weights[key]
        if op == "transpose_scale":
            return (a.transpose(1, 2) * self.weights[key].view(1, s.dim, 1)).transpose(1, 2)
        if op == "view_roundtrip":
            return (a.reshape(s.batch, s.seq * s.dim) * 1.5).view(s.batch, s.seq, s.dim)
        if op == "rownorm":
            return a / (a.pow(2).sum(-1, keepdim=True) + 1.0).sqrt()
        if op == "mean_center":
            return a - a.mean(dim=(0, 1), keepdim=True)
        if op == "softmax":
            return torch.softmax(a, dim=-1)
        if op == "inplace":
            y = a * 2.0
            y.add_(1.0).relu_()
            return y
        if op == "dropout":
            return F.dropout(a, p=s.dropout_p, training=self.training)
        if op == "exp_clamped":
            return a.clamp(-3, 3).exp()
        if op == "add":
            return a + b
        if op == "mul":
            return a * b
        if op == "sdpa":
            q, kv = a.unsqueeze(1), b.unsqueeze(1)
            return F.scaled_dot_product_attention(q, kv, kv).squeeze(1)
        return getattr(torch, op)(a) if op != "gelu" else F.gelu(a)
