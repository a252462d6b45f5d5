"""python -m autoremat.demo: train a small GPT a few steps with torch.compile's default partitioner and
with autoremat at several budgets, and print what each saved for backward, the peak memory of a step
(measured, and autoremat's prediction), how fast it ran and whether its gradients match eager PyTorch.

All strategies run in this one process on the same initial weights and batch; the numbers are for
comparing strategies against each other on this machine, not absolute speeds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

import autoremat
from autoremat.demo.model import GPT, GPTConfig, example_batch
from autoremat.measure import (
    cpu_peak_bytes,
    max_relative_error,
    measure_saved_bytes,
    median_seconds,
    step_peak_bytes,
)


@dataclass
class Row:
    strategy: str
    saved_bytes: int
    peak_bytes: int
    predicted_peak_bytes: int | None
    step_ms: float
    compile_s: float
    grad_rel_err: float


def _grads(model: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad.detach().clone() if p.grad is not None else None for p in model.parameters()]


def run_strategy(name: str, backend, base: GPT, batch, reference, steps: int) -> Row:
    model = copy.deepcopy(base).train()
    step_fn = model if backend is None else torch.compile(model, backend=backend)
    autoremat.clear_plans()
    exclude = [*model.parameters(), *model.buffers(), *batch]

    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    loss, saved = measure_saved_bytes(lambda: step_fn(*batch), exclude)
    loss.backward()
    compile_s = time.perf_counter() - t0  # first step: includes compilation for compiled strategies
    err = 0.0 if reference is None else max_relative_error(_grads(model), reference)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        step_fn(*batch).backward()

    step_s = median_seconds(step, repeats=steps)
    model.zero_grad(set_to_none=True)
    peak = _peak_bytes(lambda: step_fn(*batch).backward())
    plans = autoremat.recent_plans()
    known = [p.predicted_peak_bytes for p in plans if p.predicted_peak_bytes is not None]
    predicted = sum(known) if plans and len(known) == len(plans) else None
    return Row(name, saved.nbytes, peak, predicted, step_s * 1e3, compile_s, err)


#: a line of Kineto's (torch.profiler's C++ backend) own log, e.g.
#: ``USDT:2026-11-29 00:27:25 12993:12993 SyncActivityProfilerHandler.cpp:52] profiler_start``
_KINETO_LINE = re.compile(rb"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \S+:\d+\] ")
#: the file descriptor Kineto logs to (stderr), from C++, where Python's sys.stderr never sees it
_STDERR_FD = 2
#: torch's notice that force_disable_caches (which the demo sets so every strategy compiles cold,
#: see main) also turns off profile-guided recompilation: expected here, noise to the reader
_PGO_NOTICE = "dynamo_pgo force disabled"


@contextlib.contextmanager
def _without_profiler_log() -> Iterator[None]:
    """Drop Kineto's ``profiler_start``/``profiler_stop`` lines, which it writes to fd 2 on every
    profiled step whatever ``KINETO_LOG_LEVEL`` was when the demo started (torch reads it at import);
    anything else written to stderr meanwhile is passed through."""
    sys.stderr.flush()
    try:
        saved = os.dup(_STDERR_FD)
    except OSError:  # no stderr descriptor to redirect: let the lines through
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), _STDERR_FD)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, _STDERR_FD)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True) if not _KINETO_LINE.match(line)]
            if kept:
                sys.stderr.write(b"".join(kept).decode(errors="replace"))


def _peak_bytes(step) -> int:
    """Peak memory of one forward + backward above what was allocated before it."""
    if not torch.cuda.is_available():
        with _without_profiler_log():
            return cpu_peak_bytes(step)
    return step_peak_bytes(step, torch.device("cuda"))


def format_table(rows: list[Row], baseline: Row) -> str:
    header = (
        "| strategy | activation bytes saved | vs torch.compile | peak bytes | vs torch.compile | "
        "autoremat predicted peak | step ms | step vs torch.compile | first step s | "
        "grad max rel err vs eager |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for r in rows:
        pred = "" if r.predicted_peak_bytes is None else f"{r.predicted_peak_bytes:,}"
        lines.append(
            f"| {r.strategy} | {r.saved_bytes:,} | {r.saved_bytes / max(baseline.saved_bytes, 1):.2f}x | "
            f"{r.peak_bytes:,} | {r.peak_bytes / max(baseline.peak_bytes, 1):.2f}x | "
            f"{pred} | {r.step_ms:.1f} | {r.step_ms / baseline.step_ms:.2f}x | {r.compile_s:.1f} | "
            f"{r.grad_rel_err:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoremat.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    parser.add_argument("--compiler", choices=("inductor", "eager"), default="inductor")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per strategy (median reported)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=args.layers, d_model=args.d_model, block_size=max(args.seq, 8))
    base = GPT(cfg)
    batch = example_batch(cfg, args.batch, args.seq)

    eager_model = copy.deepcopy(base)
    eager_model(*batch).backward()
    reference = _grads(eager_model)

    strategies: list[tuple[str, object]] = [("eager", None)]
    default_backend = "inductor" if args.compiler == "inductor" else "aot_eager"
    strategies.append((f"torch.compile ({default_backend})", default_backend))
    for b in args.budgets:
        strategies.append(
            (f"autoremat budget={b:g}", autoremat.backend(memory_budget=b, compiler=args.compiler))
        )

    print(
        f"GPT: {cfg.n_layer} layers, d_model {cfg.d_model}, batch {args.batch}x{args.seq}, "
        f"compiler={args.compiler}, torch {torch.__version__}",
        flush=True,
    )
    rows = []
    # Cold compiles: a cache hit would skip the partitioner, hiding its plan (and its compile time).
    with torch.compiler.config.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PGO_NOTICE)
        for name, backend in strategies:
            print(f"  running {name} ...", flush=True)
            torch.compiler.reset()
            ref = None if backend is None else reference
            rows.append(run_strategy(name, backend, base, batch, ref, args.steps))
    print()
    print(format_table(rows, baseline=rows[1]))
    worst = max(r.grad_rel_err for r in rows)
    print(f"\nGradient parity: worst max-relative error vs eager = {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
