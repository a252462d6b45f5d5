"""Compile time of one training step: autoremat with and without its Inductor check (and with
everything in turn: the check's plans replayed when asked rather than measured during the MILP's
solves, and no MILP solve started ahead on a second thread), against torch.compile with torch's own
``activation_memory_budget``, on the same model and budget.

    python -m benchmarks.compile_time [--profile quick act] [--models gpt2 llama] [--budget 0.5]

Each case compiles cold (Inductor's caches off) and runs one forward + backward; the wall time of
that first step is the compile time users wait for. One process, a warm-up compile first (imports,
Inductor's one-time setup), then the strategies interleaved per repeat, median reported. Prints a
markdown table with the ratios, and whether autoremat chose the same plans with its work overlapped
as in turn (it must: ``passes/inductor_check.py``, ``passes/solves_ahead.py``); then where the
partition's time went (``benchmarks/stages.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoremat import _torch_compat as compat
from autoremat.passes import inductor_check, milp_solver
from benchmarks import stages
from benchmarks.models import PROFILES, case_by_name

STRATEGIES = ("torch_budget", "autoremat_unchecked", "autoremat_in_turn", "autoremat")


def first_step_seconds(
    model_name: str, profile: str, strategy: str, budget: float
) -> tuple[float, float, tuple[str, ...], dict[str, float]]:
    """(wall seconds of the cold first step, seconds autoremat spent partitioning, 0 for torch, the
    digests of autoremat's plans, their partition time by ``stages.COLUMNS``)."""
    import autoremat

    case = case_by_name(profile, model_name)
    torch.manual_seed(0)
    model = case.build().train()
    batch = case.batch(torch.device("cpu"))
    torch.compiler.reset()
    before = autoremat.plan.recorded_count()
    if strategy == "torch_budget":
        patch, compiled = {"activation_memory_budget": budget}, torch.compile(model)
    else:
        check = strategy != "autoremat_unchecked"
        backend = autoremat.backend(memory_budget=budget, inductor_check=check)
        patch, compiled = {}, torch.compile(model, backend=backend)
    overlapped = strategy != "autoremat_in_turn"
    inductor_check.MEASURE_AHEAD = milp_solver.SOLVE_AHEAD = overlapped
    try:
        with compat.functorch_config.patch(patch), torch.compiler.config.patch(force_disable_caches=True):
            started = time.perf_counter()
            compiled(*batch).backward()
            seconds = time.perf_counter() - started
    finally:
        inductor_check.MEASURE_AHEAD = milp_solver.SOLVE_AHEAD = True
    plans = autoremat.plan.recorded_since(before)
    breakdown = stages.summed(p.solver_stats.get("stage_seconds", {}) for p in plans)
    return seconds, sum(p.partition_seconds for p in plans), tuple(p.digest() for p in plans), breakdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", nargs="+", default=["quick"], choices=tuple(PROFILES))
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    warm = torch.compile(torch.nn.Linear(8, 8))
    warm(torch.randn(2, 8)).sum().backward()
    lines = [
        "| model | profile | torch knob s | autoremat unchecked s | all in turn s (partition s) | "
        "autoremat s (partition s) | same plans | autoremat / unchecked | autoremat / torch knob |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    breakdowns = [
        f"| model | profile | autoremat partition s {stages.header()}",
        "|---|---|---:|" + "---:|" * len(stages.COLUMNS),
    ]
    for profile in args.profile:
        for name in args.models:
            runs: dict[str, list[tuple[float, float, tuple[str, ...], dict[str, float]]]] = {
                s: [] for s in STRATEGIES
            }
            for _ in range(args.repeats):
                for strategy in STRATEGIES:
                    runs[strategy].append(first_step_seconds(name, profile, strategy, args.budget))
                    print(name, profile, strategy, runs[strategy][-1][:2], flush=True)
            med = {s: statistics.median(r[0] for r in runs[s]) for s in STRATEGIES}
            part = {s: statistics.median(r[1] for r in runs[s]) for s in STRATEGIES}
            # overlapping must not change a plan: every run of both gave the same digests
            same = len({r[2] for s in ("autoremat", "autoremat_in_turn") for r in runs[s]}) == 1
            split = {c: statistics.median(r[3][c] for r in runs["autoremat"]) for c in stages.COLUMNS}
            breakdowns.append(f"| {name} | {profile} | {part['autoremat']:.1f} | {stages.cells(split)} |")
            checked, unchecked, knob = med["autoremat"], med["autoremat_unchecked"], med["torch_budget"]
            in_turn = med["autoremat_in_turn"]
            lines.append(
                f"| {name} | {profile} | {knob:.1f} | {unchecked:.1f} | "
                f"{in_turn:.1f} ({part['autoremat_in_turn']:.1f}) | "
                f"{checked:.1f} ({part['autoremat']:.1f}) | {'yes' if same else 'NO'} | "
                f"{checked / unchecked:.2f} | {checked / knob:.2f} |"
            )
    print(f"\ntorch {torch.__version__}, budget {args.budget}, median of {args.repeats}\n")
    print("\n".join(lines))
    print("\nWhere autoremat's partition time went (the checked, overlapped runs; medians per column,")
    print("benchmarks/stages.py):\n")
    print("\n".join(breakdowns))


if __name__ == "__main__":
    main()
