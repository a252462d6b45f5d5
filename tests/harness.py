"""Shared helpers: compile a model with a given backend and collect loss and gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from autoremat import _torch_compat as compat
from autoremat.backend import codegen_free_backend
from autoremat.measure import CapturedJoint, capture_joint_graphs

# Against the same decomposed graphs run without recomputation, only operation order may differ.
FP32_TOL = dict(rtol=1e-4, atol=1e-5)
# Against eager PyTorch: Inductor's decompositions (e.g. layer norm as var_mean + rsqrt) round
# differently from eager's fused kernels; torch._dynamo.testing.same's default tol is 1e-4 with a
# relative fallback, and ill-conditioned tiny layer norms need 1e-3 relative.
EAGER_TOL = dict(rtol=1e-3, atol=1e-4)
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


@dataclass
class StepResult:
    loss: torch.Tensor
    grads: dict[str, torch.Tensor | None]


def train_step(model: nn.Module, fn: Callable, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> StepResult:
    """One forward+backward of ``fn`` on fresh-grad copies of ``inputs``; returns loss and all grads."""
    model.zero_grad(set_to_none=True)
    inputs = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
    torch.manual_seed(seed)
    loss = fn(*inputs)
    loss.backward()
    grads = {f"param:{n}": p.grad for n, p in model.named_parameters()}
    grads.update({f"input:{i}": t.grad for i, t in enumerate(inputs)})
    return StepResult(loss.detach(), grads)


def no_recompute_backend() -> Callable:
    """Reference for random models: same graphs and random draws, nothing recomputed."""
    return codegen_free_backend(compat.torch_default_partition)


def compiled_step(model: nn.Module, backend, inputs, seed: int = 0, **compile_kwargs) -> StepResult:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, **compile_kwargs)
    return train_step(model, compiled, inputs, seed)


def assert_steps_match(actual: StepResult, expected: StepResult, tol: dict | None = None) -> None:
    tol = tol or FP32_TOL
    torch.testing.assert_close(actual.loss, expected.loss, **tol)
    assert actual.grads.keys() == expected.grads.keys()
    for name, exp in expected.grads.items():
        got = actual.grads[name]
        assert (got is None) == (exp is None), f"{name}: grad presence differs"
        if exp is not None:
            torch.testing.assert_close(got, exp, **tol, msg=lambda m, n=name: f"{n}: {m}")


def capture_joint(model: nn.Module, *inputs: torch.Tensor) -> CapturedJoint:
    """The single joint graph of ``model(*inputs)``."""
    (joint,) = capture_joint_graphs(model, *inputs)
    return joint


def assert_small_step_matches_eager(backend, caplog) -> None:
    """A small MLP's training step through ``backend`` equals eager's, with autoremat's warnings
    captured in ``caplog`` (the step must survive whatever failure a test injected)."""
    import logging

    from tests.models import MLP

    model = MLP(d=8)
    x = torch.randn(2, 8, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        got = compiled_step(model, backend, (x,))
    assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
