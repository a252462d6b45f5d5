"""FSDP2 (+ optional tensor parallelism) with per-block ``torch.compile(backend="autoremat")``.

A Llama-style model (RMSNorm, rotary attention, SwiGLU) trained for a few steps the way torchtitan
does it: tensor parallelism first (``--tp``), then each TransformerBlock compiled on its own, then
FSDP2 (``fully_shard``) per block and on the root. Per-block compile keeps every joint graph small and
identical across blocks; a ``--budget`` therefore applies to each block's joint graph, and a
``--step-budget`` to the whole step (see README, "Distributed training" and "Step budget").

    torchrun --nproc_per_node=2 examples/fsdp2_tp.py                 # CPU: gloo, FSDP over 2 ranks
    torchrun --nproc_per_node=2 examples/fsdp2_tp.py --tp            # CPU: TP over 2 ranks (dp=1)
    torchrun --nproc_per_node=8 examples/fsdp2_tp.py --tp 2 --budget 0.3   # GPUs: nccl, dp=4 x tp=2
    torchrun --nproc_per_node=2 examples/fsdp2_tp.py --step-budget 0.5     # one budget for the step

With ``--step-budget`` (bytes, a size string, "auto" or a fraction between the least and the
runtime-optimal step peak) the blocks are planned together for the whole step, AdamW included
(README, "Step budget"), and every rank measures its last step's peak, from before the forward to
after ``optimizer.step()``, next to the budget.

Every rank prints the digest of each autoremat plan; they must be identical on all ranks (the
decisions may not depend on rank-local measurements). ``--dump PATH`` makes rank 0 write the losses,
the full (unsharded) gradients after the first step and every rank's digests, which
``tests/test_distributed.py`` compares against a single-process eager run of the same model.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelArgs:
    vocab: int = 128
    dim: int = 64
    layers: int = 2
    heads: int = 4
    hidden: int = 128
    seq: int = 16
    rope_theta: float = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(args: ModelArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (seq, head_dim/2); real-valued so they work on every device and backend."""
    head_dim = args.dim // args.heads
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(args.seq).float(), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]); x is (batch, seq, heads, head_dim)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.head_dim = args.dim // args.heads
        self.wq = nn.Linear(args.dim, args.dim, bias=False)
        self.wk = nn.Linear(args.dim, args.dim, bias=False)
        self.wv = nn.Linear(args.dim, args.dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds heads/tp of them
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden, bias=False)
        self.w2 = nn.Linear(args.hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = RMSNorm(args.dim), RMSNorm(args.dim)
        self.attention, self.feed_forward = Attention(args), FeedForward(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(args.vocab, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.layers))
        self.norm = RMSNorm(args.dim)
        self.output = nn.Linear(args.dim, args.vocab, bias=False)
        cos, sin = rotary_tables(args)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The logits; with ``targets``, the loss (through ``loss_head``, which a step budget
        compiles like the blocks, so that the loss's activations are counted too)."""
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, self.cos, self.sin)
        if targets is not None:
            return self.loss_head(h, targets)
        return self.output(self.norm(h))

    def loss_head(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_fn(self.output(self.norm(h)), targets)


def build_model(args: ModelArgs, seed: int = 0) -> Llama:
    """The same initial weights on every rank and in the single-process reference."""
    torch.manual_seed(seed)
    model = Llama(args)
    for name, param in model.named_parameters():
        if param.dim() > 1:
            nn.init.normal_(param, std=1.0 / math.sqrt(param.shape[-1]))
        elif not name.endswith("weight"):
            nn.init.zeros_(param)
    return model


def global_batch(args: ModelArgs, batch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets) of the whole data-parallel batch for ``step``; each dp rank takes a slice."""
    gen = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, args.vocab, (batch, args.seq + 1), generator=gen)
    return data[:, :-1], data[:, 1:]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))


def canonical_name(name: str) -> str:
    """Parameter name without the wrappers torch.compile / FSDP put in the path."""
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def apply_tp(model: Llama, tp_mesh) -> None:
    """Megatron-style TP of each block: q/k/v and w1/w3 column-wise, wo and w2 row-wise."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(),
    }
    for block in model.layers:
        parallelize_module(block, tp_mesh, plan)


def apply_compile(model: Llama, options: dict) -> None:
    """Compile each TransformerBlock on its own (torchtitan's per-block compile); under a step
    budget the loss head too, so that every activation of the step is in a compiled graph."""
    for index, block in enumerate(model.layers):
        model.layers[index] = torch.compile(block, backend="autoremat", options=options, fullgraph=True)
    if "step_budget" in options:
        model.loss_head = torch.compile(model.loss_head, backend="autoremat", options=options)


def apply_fsdp(model: Llama, dp_mesh) -> None:
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds now in parameters, gradients and optimizer state (local shards)."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def measure_step(model, optimizer, tokens, targets, device_type) -> tuple[int, float]:
    """(this rank's step peak: what it held before plus the allocator's peak above that over the
    forward, backward and optimizer step; the step's loss)."""
    from autoremat.measure import step_peak_bytes

    box = []

    def step() -> None:
        loss = model(tokens.to(device_type), targets.to(device_type))
        loss.backward()
        optimizer.step()
        box.append(loss.detach().clone())

    before = held_bytes(model, optimizer)
    peak = before + step_peak_bytes(step, torch.device(device_type))
    loss = box[0]
    dist.all_reduce(loss)
    return peak, loss.item() / dist.get_world_size()


def report_step_budget(measured: int, rank: int, world: int) -> list:
    """Every rank's (rank, measured, budget, predicted, status), printed by rank 0."""
    import autoremat

    plan = autoremat.step_plans()[-1]
    row = (rank, measured, plan.cap_bytes, plan.predicted_peak_bytes, plan.status)
    rows: list = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        print(plan.summary(), flush=True)
        for r, got, cap, predicted, status in rows:
            print(
                f"rank {r}: step peak {got} bytes measured, budget {cap}, measured / budget "
                f"{got / cap:.3f}, predicted {predicted} ({status})",
                flush=True,
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tp", type=int, nargs="?", const=2, default=1, help="tensor-parallel degree (flag = 2)"
    )
    parser.add_argument("--budget", default="1.0", help="autoremat memory_budget (fraction or bytes)")
    parser.add_argument(
        "--compiler",
        default=None,
        choices=("inductor", "eager"),
        help="default: inductor on GPU, eager (no codegen, fast) on CPU",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="global batch (split over dp ranks)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument(
        "--step-budget", default=None, help="one budget for the whole step, per rank (AdamW); measured"
    )
    parser.add_argument("--no-compile", action="store_true", help="eager FSDP/TP, for comparison")
    parser.add_argument("--dump", default=None, help="rank 0 writes losses, step-0 grads and digests here")
    return parser.parse_args(argv)


def budget_option(text: str) -> float | int | str:
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text  # a size string such as "2GiB"


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    cuda = torch.cuda.is_available()
    device_type = "cuda" if cuda else "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if world % opts.tp:
        raise SystemExit(f"--tp {opts.tp} does not divide the world size {world}")

    from torch.distributed.device_mesh import init_device_mesh

    import autoremat

    dp = world // opts.tp
    mesh = init_device_mesh(device_type, (dp, opts.tp), mesh_dim_names=("dp", "tp"))
    args = ModelArgs(layers=opts.layers, seq=opts.seq)
    if opts.batch % dp:
        raise SystemExit(f"--batch {opts.batch} must be divisible by the dp degree {dp}")
    model = build_model(args).to(device_type)
    if opts.tp > 1:
        apply_tp(model, mesh["tp"])
    if not opts.no_compile:
        compiler = opts.compiler or ("inductor" if cuda else "eager")
        budget = {"memory_budget": budget_option(opts.budget)}
        if opts.step_budget is not None:
            budget = {"step_budget": budget_option(opts.step_budget)}
        apply_compile(model, {**budget, "compiler": compiler})
    apply_fsdp(model, mesh["dp"])
    if opts.step_budget is not None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    dp_rank, per_rank = mesh["dp"].get_local_rank(), opts.batch // dp
    losses, grads = [], {}
    measured = None
    for step in range(opts.steps):
        tokens, targets = global_batch(args, opts.batch, step)
        rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
        if opts.step_budget is not None and step == opts.steps - 1:
            measured, loss = measure_step(model, optimizer, tokens[rows], targets[rows], device_type)
            losses.append(loss)
            optimizer.zero_grad()
            continue
        if opts.step_budget is not None:
            loss = model(tokens[rows].to(device_type), targets[rows].to(device_type))
        else:
            loss = loss_fn(model(tokens[rows].to(device_type)), targets[rows].to(device_type))
        loss.backward()
        # the reported loss is the global-batch mean, as a single process would compute it
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses.append(global_loss.item() / world)
        if step == 0 and opts.dump:  # full_tensor() is a collective: every rank takes part
            grads = {canonical_name(n): p.grad.full_tensor().cpu() for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0:
            print(f"step {step}: loss {losses[-1]:.6f}", flush=True)

    step_rows = report_step_budget(measured, rank, world) if measured is not None else []
    digests = [plan.digest() for plan in autoremat.recent_plans()]
    every_rank: list[list[str] | None] = [None] * world
    dist.all_gather_object(every_rank, digests)
    print(f"rank {rank}: {len(digests)} autoremat plans, digests {[d[:12] for d in digests]}", flush=True)
    if rank == 0:
        same = all(d == every_rank[0] for d in every_rank)
        for plan in autoremat.recent_plans():
            print(plan.summary(), flush=True)
        print(f"plans identical on all {world} ranks: {same}", flush=True)
        if opts.dump:
            torch.save(
                {
                    "losses": losses,
                    "grads": grads,
                    "digests": every_rank,
                    "plans": [plan.to_dict() for plan in autoremat.recent_plans()],
                    "world": world,
                    "tp": opts.tp,
                    "layers": opts.layers,
                    "batch": opts.batch,
                    "step_budget": step_rows,
                },
                opts.dump,
            )
    dist.barrier()  # let rank 0 finish writing before any rank tears the process group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
