"""The memory a training step holds outside its activations: parameters, gradients, optimizer state,
and the optimizer's own scratch while it steps (docs/architecture.md, "Step budget").

Read from the optimizer after its first step, when all three exist (Adam's moments are allocated
lazily by that step). Storages are counted once; a distributed tensor (FSDP2's sharded parameters and
their state) counts its local shard, which is what this rank holds.

The scratch of ``optimizer.step()`` is modelled from torch's implementations: the multi-tensor
("foreach") path makes one temporary list the size of a parameter group (Adam's ``sqrt`` of the second
moments; SGD's and Adam's weight-decayed gradients, Adam with coupled weight decay makes both), the
single-tensor path two temporaries the size of the largest parameter (``exp_avg_sq.sqrt() / c``), and
the fused kernels none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from autoremat import _torch_compat as compat


@dataclass(frozen=True)
class StaticMemory:
    """Bytes a step holds besides activations (local to this rank)."""

    parameters: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    #: the optimizer step's temporaries, on top of the three above
    optimizer_scratch: int = 0

    @property
    def held(self) -> int:
        """Held through the step (the activation phase counts them all, conservatively: with
        ``zero_grad(set_to_none=True)`` the gradients appear only as the backward makes them)."""
        return self.parameters + self.gradients + self.optimizer_state

    def describe(self) -> str:
        return (
            f"parameters {self.parameters}, gradients {self.gradients}, optimizer state "
            f"{self.optimizer_state}, optimizer step scratch {self.optimizer_scratch} bytes"
        )


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds: a DTensor's local shard (``to_local``), else ``t``."""
    if callable(getattr(t, "to_local", None)):
        with torch.no_grad():
            return t.to_local()
    return t


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[tuple[str, int]]) -> int:
    total = 0
    for t in tensors:
        t = local_tensor(t)
        if t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key[1] == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _params(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


def _state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        for value in state.values():
            # step counters are 0-d tensors: real memory, but a few bytes each
            if isinstance(value, torch.Tensor):
                yield value


def static_memory(optimizers: Iterable[torch.optim.Optimizer]) -> StaticMemory:
    """What ``optimizers`` hold now: call it after their first step."""
    seen: set[tuple[str, int]] = set()
    optimizers = list(optimizers)
    params = [p for o in optimizers for p in _params(o)]
    parameters = _storage_bytes(params, seen)
    gradients = _storage_bytes((p.grad for p in params if p.grad is not None), seen)
    state = _storage_bytes((t for o in optimizers for t in _state_tensors(o)), seen)
    scratch = max((optimizer_scratch_bytes(o) for o in optimizers), default=0)
    return StaticMemory(parameters, gradients, state, scratch)


def optimizer_scratch_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The temporaries of one ``optimizer.step()`` (module docstring), the largest group's."""
    worst = 0
    adam_like = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        sizes = [local_tensor(p).numel() * local_tensor(p).element_size() for p in params]
        if group.get("fused"):
            continue
        foreach = group.get("foreach")
        if foreach is None:
            foreach = compat.optimizer_defaults_to_foreach(params)
        if foreach:
            coupled_decay = (
                adam_like and not isinstance(optimizer, torch.optim.AdamW) and group.get("weight_decay", 0)
            )
            worst = max(worst, sum(sizes) * (2 if coupled_decay else 1))
        else:
            worst = max(worst, 2 * max(sizes))
    return worst
