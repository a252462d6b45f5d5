"""A whole-step budget, measured: the step's peak from before the forward to after
``optimizer.step()`` (AdamW), against the budget, for a Llama-style model compiled per block and
compiled whole with one graph break; and against dividing the budget evenly across the compiled
graphs by hand (per-graph byte budgets), at the same measured peak.

    python -m benchmarks.step_budget [--compiler eager inductor] [--setups per-block graph-break]

For each setup a probe run reads the least and the runtime-optimal step peak from the step plan;
then three byte budgets a quarter, half and three quarters of the way between them are each run
for three steps (the first observes, the second plans and compiles again, the third is measured).
The measured step peak is the CPU allocator's peak (CUDA's ``max_memory_allocated`` on a GPU) plus
what was allocated before the step (parameters and optimizer state). One process, side by side.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoremat import _torch_compat as compat
from benchmarks.models import LlamaBlock, RMSNorm

SETUPS = ("per-block", "graph-break")


class Head(nn.Module):
    def __init__(self, d: int, vocab: int) -> None:
        super().__init__()
        self.norm, self.out = RMSNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.out(self.norm(x)).flatten(0, 1), targets.flatten())


class StepLlama(nn.Module):
    """Four Llama blocks and a head; ``graph_break_after`` inserts a graph break after that block."""

    def __init__(
        self,
        vocab: int = 512,
        d: int = 64,
        layers: int = 4,
        seq: int = 256,
        graph_break_after: int | None = None,
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(LlamaBlock(d, 4, 2, 4 * d) for _ in range(layers))
        self.head = Head(d, vocab)
        self.graph_break_after = graph_break_after
        hd = d // 4
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(seq).float(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        split = len(self.blocks) if self.graph_break_after is None else self.graph_break_after + 1
        x = self._blocks(self.emb(idx), 0, split)
        if self.graph_break_after is not None:
            compat.graph_break()  # outside the loops: Dynamo resumes after it in one frame
        return self.head(self._blocks(x, split, len(self.blocks)), targets)

    def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            x = block(x, self.cos, self.sin)
        return x


@dataclass(frozen=True)
class Size:
    vocab: int = 512
    d: int = 64
    layers: int = 4
    seq: int = 256
    batch: int = 16


def build(setup: str, size: Size, backend: Callable[..., object]) -> tuple[nn.Module, Callable[..., object]]:
    """(the model, the callable the training step calls): blocks and head compiled one by one, or
    the whole model with a graph break after its second block."""
    torch.manual_seed(0)
    if setup == "per-block":
        model = StepLlama(size.vocab, size.d, size.layers, size.seq)
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, backend=backend)
        model.head = torch.compile(model.head, backend=backend)
        return model, model
    if setup == "graph-break":
        model = StepLlama(size.vocab, size.d, size.layers, size.seq, graph_break_after=size.layers // 2 - 1)
        return model, torch.compile(model, backend=backend)
    raise ValueError(f"setup={setup!r} is invalid: expected one of {SETUPS}")


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, gradients and optimizer state allocated now (storages once)."""
    seen: set[int] = set()
    total = 0
    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@dataclass
class Run:
    setup: str
    compiler: str
    budget: str
    cap_bytes: int | None
    measured_bytes: int
    predicted_bytes: int | None
    least_bytes: int | None
    runtime_optimal_bytes: int | None
    predicted_recompute_ms: float | None
    status: str
    max_grad_error: float
    #: parameters, gradients and optimizer state as the step plan counted them
    held_bytes: int | None = None


def run(setup: str, options: dict, size: Size = Size(), steps: int = 3) -> Run:
    """Train ``steps`` steps under ``options`` and measure the last one's step peak."""
    import autoremat
    from autoremat.measure import max_relative_error, step_peak_bytes
    from autoremat.step import step_plans

    torch.compiler.reset()
    before_plans = len(step_plans())
    autoremat.clear_plans()
    model, call = build(setup, size, autoremat.backend(**options))
    eager = StepLlama(size.vocab, size.d, size.layers, size.seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, size.vocab, (size.batch, size.seq), generator=gen)
    targets = torch.randint(0, size.vocab, (size.batch, size.seq), generator=gen)

    def step() -> None:
        call(idx, targets).backward()
        optimizer.step()

    error = 0.0
    for i in range(steps - 1):
        if i == steps - 2:  # the planned graphs' gradients, against eager on the same weights
            with torch.no_grad():
                for mine, theirs in zip(eager.parameters(), model.parameters(), strict=True):
                    mine.copy_(theirs)
            eager(idx, targets).backward()
            call(idx, targets).backward()
            error = max_relative_error(
                [p.grad for p in model.parameters()], [p.grad for p in eager.parameters()]
            )
            optimizer.step()
        else:
            step()
        optimizer.zero_grad(set_to_none=True)
    before = held_bytes(model, optimizer)
    measured = before + step_peak_bytes(step, torch.device("cpu"))
    optimizer.zero_grad(set_to_none=True)
    plans = step_plans()[before_plans:]
    plan = plans[-1] if plans else None
    budget = options.get("step_budget", options.get("memory_budget"))
    recompute_ms = plan.predicted_recompute_s * 1e3 if plan else _per_graph_recompute_ms(setup, size)
    return Run(
        setup,
        options.get("compiler", "inductor"),
        str(budget),
        plan.cap_bytes if plan else None,
        measured,
        plan.predicted_peak_bytes if plan else None,
        plan.least_peak_bytes if plan else None,
        plan.runtime_optimal_peak_bytes if plan else None,
        recompute_ms,
        plan.status if plan else "per-graph",
        error,
        plan.static.held if plan else None,
    )


def _per_graph_recompute_ms(setup: str, size: Size) -> float:
    """Predicted recompute of one step planned graph by graph: per block, the block's graph (compiled
    first) runs once per block and the head's once."""
    import autoremat

    plans = [p for p in autoremat.recent_plans() if p.predicted_recompute_s is not None]
    runs = [size.layers if setup == "per-block" and i == 0 else 1 for i in range(len(plans))]
    return sum(p.predicted_recompute_s * n for p, n in zip(plans, runs, strict=True)) * 1e3


def even_split(setup: str, compiler: str, cap: int, held: int, size: Size = Size()) -> tuple[Run, Run]:
    """Dividing the budget by hand: each compiled graph gets a byte budget of the step's allowance
    for activations over the number of graph runs. Then the step budget at the peak that measured,
    for the comparison at equal measured step peak: (by hand, step budget)."""
    instances = size.layers + 1 if setup == "per-block" else 2
    per_graph = max((cap - held) // instances, 2)
    by_hand = run(setup, {"memory_budget": per_graph, "compiler": compiler}, size)
    return by_hand, run(setup, {"step_budget": by_hand.measured_bytes, "compiler": compiler}, size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compiler", nargs="+", default=["eager"], choices=("eager", "inductor"))
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows: list[Run] = []
    print(f"torch {torch.__version__}, AdamW, {Size()}")
    print()
    print(
        "| setup | compiler | budget | cap bytes | measured bytes | measured / cap | predicted / measured |"
        " predicted recompute ms | status | grad error |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for compiler in args.compiler:
        for setup in args.setups:
            probe = run(setup, {"step_budget": 0.5, "compiler": compiler})
            least, high = probe.least_bytes, probe.runtime_optimal_bytes
            budgets = [int(least + f * (high - least)) for f in (0.25, 0.5, 0.75)]
            for budget in budgets:
                got = run(setup, {"step_budget": budget, "compiler": compiler})
                rows.append(got)
                print(
                    f"| {setup} | {compiler} | {budget} (least {least}, runtime-optimal {high}) | "
                    f"{got.cap_bytes} | {got.measured_bytes} | {got.measured_bytes / budget:.3f} | "
                    f"{got.predicted_bytes / got.measured_bytes:.3f} | {got.predicted_recompute_ms:.3f} | "
                    f"{got.status} | {got.max_grad_error:.1e} |",
                    flush=True,
                )
    print()
    print("Dividing the budget by hand (a byte budget per compiled graph) vs the step budget at the step")
    print("peak the division measured:")
    print()
    print(
        "| setup | compiler | per-graph budgets: measured bytes | recompute ms "
        "| step budget: measured bytes | recompute ms |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for compiler in args.compiler:
        for setup in args.setups:
            mid = [r for r in rows if r.setup == setup and r.compiler == compiler][1]
            by_hand, step = even_split(setup, compiler, mid.cap_bytes, mid.held_bytes)
            rows += [by_hand, step]
            print(
                f"| {setup} | {compiler} | {by_hand.measured_bytes} | {by_hand.predicted_recompute_ms:.3f} | "
                f"{step.measured_bytes} | {step.predicted_recompute_ms:.3f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
