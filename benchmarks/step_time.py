"""Step times a reader can trust: strategies interleaved in one process, with bootstrap intervals.

    python -m benchmarks.step_time [--profile quick] [--models gpt2 llama] [--budgets 0.5 0.25]
        [--rounds 40] [--threads 1] [--json out.json]

On a shared machine the load changes over seconds, so a median taken in one process and compared with
one taken minutes later in another measures the machine as much as the strategy (issue 16: the same
plan's median moved from 1.77 to 4.11 ms between cases of one run). Here every strategy of a model is
compiled in this one process: ``torch.compile`` default, and at each budget ``b`` torch's
``activation_memory_budget=b`` and autoremat at ``b``. After a warm-up, each round runs every strategy
once in an order shuffled per round (seeded), so slow spells hit all strategies alike. Reported per
strategy: minimum and median step time; per pair (each strategy against ``torch.compile``, autoremat
against torch's budget at the same ``b``): the ratio of medians with a bootstrap 95% interval over
rounds (resampling whole rounds keeps each round's shared noise paired). An interval that spans 1 is
reported as "indistinguishable".

Memory is not measured here: peaks stay with ``benchmarks.run``'s one fresh process per case, where no
other strategy's buffers or caches are alive.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

import autoremat
from autoremat import _torch_compat as compat
from benchmarks.models import PROFILES, case_by_name
from benchmarks.run import machine

#: timed rounds by default: 30-40 interleaved rounds gave +-4-8% intervals on this suite (issue 16)
DEFAULT_ROUNDS = 40
#: untimed rounds first: the first backward compiles lazily, later ones warm caches and the allocator
WARMUP_ROUNDS = 3
#: bootstrap resamples: the 2.5/97.5 percentiles move by well under 1% between seeds at this count
RESAMPLES = 2000
#: one intra-op thread: on the shared 2-core machines the other core runs other work, and a fixed count
#: keeps runs comparable
DEFAULT_THREADS = 1
CONFIDENCE = 0.95


@dataclass
class Strategy:
    label: str
    kind: str  # compile | torch_budget | autoremat
    budget: float | None
    step: Callable[[], None]
    #: Dynamo graphs this strategy's backend compiled (checked > 0: no silent eager fallback)
    compiles: list[int] = field(default_factory=lambda: [0])
    times: list[float] = field(default_factory=list)


def _counted(backend: Callable[..., Any], compiles: list[int]) -> Callable[..., Any]:
    """Wrap a Dynamo backend to count its compiles. A distinct backend object per strategy also keeps
    Dynamo from sharing one strategy's compiled code with another (its cache entries are guarded on
    the backend)."""

    def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        compiles[0] += 1
        return backend(gm, example_inputs)

    return compile_graph


def _inductor(budget: float | None) -> Callable[..., Any]:
    """Inductor with torch's partitioner; under ``activation_memory_budget=budget`` when given. The
    partition happens inside ``compile_fx`` (the backward's kernels compile later, from the graph
    already split), so the patch only needs to cover this call."""

    def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        if budget is None:
            return compat.compile_fx(gm, example_inputs)
        with compat.functorch_config.patch(activation_memory_budget=budget):
            return compat.compile_fx(gm, example_inputs)

    return compile_graph


def build_strategies(
    model_name: str, profile: str, budgets: Sequence[float], device: torch.device
) -> list[Strategy]:
    """torch.compile default, then torch's budget and autoremat at each budget, each on its own copy of
    the same initial model and batch."""
    case = case_by_name(profile, model_name)
    torch.manual_seed(0)
    base = case.build().to(device).train()
    batch = case.batch(device)
    specs: list[tuple[str, str, float | None]] = [("compile", "compile", None)]
    for b in budgets:
        specs += [(f"torch_budget@{b:g}", "torch_budget", b), (f"autoremat@{b:g}", "autoremat", b)]
    strategies = []
    for label, kind, b in specs:
        model = copy.deepcopy(base)
        compiles = [0]
        if kind == "autoremat":
            backend: Callable[..., Any] = autoremat.backend(memory_budget=b)
        else:
            backend = _inductor(b)
        fn = torch.compile(model, backend=_counted(backend, compiles))

        def step(model: torch.nn.Module = model, fn: Callable[..., Any] = fn) -> None:
            model.zero_grad(set_to_none=True)
            fn(*batch).backward()

        strategies.append(Strategy(label, kind, b, step, compiles))
    return strategies


def run_rounds(strategies: list[Strategy], rounds: int, seed: int) -> None:
    """Warm up, then time ``rounds`` rounds, each running every strategy once in a shuffled order."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(WARMUP_ROUNDS):
        for s in strategies:
            s.step()
    for s in strategies:
        if s.compiles[0] == 0:
            raise RuntimeError(f"{s.label}: its backend never compiled a graph (would time eager code)")
    order = list(range(len(strategies)))
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        gc.collect()  # outside the timed region: a collection must not land inside one strategy's step
        for i in order:
            sync()
            t0 = time.perf_counter()
            strategies[i].step()
            sync()
            strategies[i].times.append(time.perf_counter() - t0)


def ratio_interval(a: Sequence[float], b: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """median(a) / median(b) with a paired bootstrap interval over rounds (round i of a and of b ran
    back to back, so they are resampled together)."""
    x, y = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    ratios = np.median(x[idx], axis=1) / np.median(y[idx], axis=1)
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    verdict = "indistinguishable" if low <= 1.0 <= high else ("faster" if high < 1.0 else "slower")
    return {"ratio": float(np.median(x) / np.median(y)), "low": low, "high": high, "verdict": verdict}


def measure_model(
    model_name: str,
    profile: str,
    budgets: Sequence[float],
    rounds: int,
    seed: int,
    resamples: int,
    device: torch.device,
) -> dict[str, Any]:
    strategies = build_strategies(model_name, profile, budgets, device)
    run_rounds(strategies, rounds, seed)
    by_label = {s.label: s for s in strategies}
    compile_times = by_label["compile"].times
    result: dict[str, Any] = {
        "model": model_name,
        "strategies": {
            s.label: {
                "min_s": min(s.times),
                "median_s": statistics.median(s.times),
                "graphs": s.compiles[0],
                "times": s.times,
            }
            for s in strategies
        },
        "vs_compile": {
            s.label: ratio_interval(s.times, compile_times, resamples, seed)
            for s in strategies
            if s.kind != "compile"
        },
        "comparisons": [],
    }
    for b in budgets:
        ours, theirs = by_label[f"autoremat@{b:g}"], by_label[f"torch_budget@{b:g}"]
        result["comparisons"].append(
            {
                "model": model_name,
                "budget": b,
                "autoremat_vs_torch_budget": ratio_interval(ours.times, theirs.times, resamples, seed),
                "autoremat_vs_compile": result["vs_compile"][ours.label],
                "torch_budget_vs_compile": result["vs_compile"][theirs.label],
            }
        )
    return result


def _interval(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] {r['verdict']}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | strategy | min ms | median ms | vs compile (ratio of medians [95% CI]) | "
        "vs torch_budget at the same b |",
        "|---|---|---:|---:|---|---|",
    ]
    for res in results:
        by_budget = {c["budget"]: c for c in res["comparisons"]}
        for label, s in res["strategies"].items():
            vs_compile = _interval(res["vs_compile"][label]) if label in res["vs_compile"] else ""
            vs_torch = ""
            if label.startswith("autoremat@"):
                vs_torch = _interval(by_budget[float(label.split("@")[1])]["autoremat_vs_torch_budget"])
            lines.append(
                f"| {res['model']} | {label} | {s['min_s'] * 1e3:.2f} | {s['median_s'] * 1e3:.2f} | "
                f"{vs_compile} | {vs_torch} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import suite

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=tuple(PROFILES))
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results (with every round's times) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # a fresh Inductor cache: nothing compiled by an earlier run (or another version) is reused
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="autoremat-step-time-"))
    names = args.models or [c.name for c in suite(args.profile)]
    started = time.perf_counter()
    results = []
    for name in names:
        results.append(
            measure_model(
                name,
                args.profile,
                args.budgets,
                args.rounds,
                args.seed,
                args.resamples,
                torch.device(args.device),
            )
        )
        print(f"[{name}] done ({time.perf_counter() - started:.0f} s)", flush=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, torch {torch.__version__}, profile "
        f"`{args.profile}`, {args.threads} thread(s), {args.rounds} interleaved rounds after "
        f"{WARMUP_ROUNDS} warm-up, seed {args.seed}, {args.resamples} bootstrap resamples."
    )
    print("\n" + header + "\n\n" + markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "torch": torch.__version__,
                    "profile": args.profile,
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "results": results,
                    "comparisons": [c for r in results for c in r["comparisons"]],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
