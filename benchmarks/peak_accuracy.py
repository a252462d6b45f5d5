"""Does the budget hold? Predicted vs measured peak activation memory across budgets, per model.

    python -m benchmarks.peak_accuracy [--profile quick] [--compiler eager inductor] [--models ...]

For each benchmark model and each budget (1.0, 0.75, 0.5, 0.25, 0.1, 0.0) the model is compiled with
autoremat and one training step (forward + backward, gradients already freed) is measured: CUDA
``max_memory_allocated`` above what was allocated before the step, or on CPU the allocator's profiler
events replayed to a running peak. Printed per row: the plan's predicted peak, the measured peak,
their ratio, predicted recompute time, and whether the measured peak is non-increasing as the budget
falls. With ``--compiler eager`` (the codegen-free path) the graphs run op by op, which is exactly
what the liveness model simulates; under Inductor, fusion removes transients, so measured <= predicted.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
from collections.abc import Iterator

import torch

from benchmarks.models import PROFILES

BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.0)


def measure(
    model_name: str,
    profile: str,
    compiler: str,
    budget: float,
    device: torch.device,
    options: dict | None = None,
) -> dict:
    import autoremat
    from autoremat.measure import cpu_peak_bytes
    from benchmarks.models import case_by_name

    case = case_by_name(profile, model_name)
    torch.manual_seed(0)
    model = case.build().to(device).train()
    batch = case.batch(device)
    torch.compiler.reset()
    before = autoremat.plan.recorded_count()
    backend = autoremat.backend(memory_budget=budget, compiler=compiler, **(options or {}))
    compiled = torch.compile(model, backend=backend)
    with _partitions() as partitions, torch.compiler.config.patch(force_disable_caches=True):
        compiled(*batch).backward()  # compile cold: a cache hit would skip the partitioner
    plans = autoremat.plan.recorded_since(before)
    replayed = _inductor_plan_peak(partitions, backend.options) if compiler == "inductor" else None
    model.zero_grad(set_to_none=True)

    def step() -> None:
        compiled(*batch).backward()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - start
    else:
        measured = cpu_peak_bytes(step)
    predicted = sum(p.predicted_peak_bytes or 0 for p in plans)
    gaps = [p.optimality_gap for p in plans if p.optimality_gap is not None]
    return {
        "model": model_name,
        "compiler": compiler,
        "budget": budget,
        "graphs": len(plans),
        "solver": "+".join(sorted({p.solver for p in plans})),
        "status": "+".join(sorted({p.status for p in plans})),
        "gap": max(gaps) if gaps else None,
        "predicted_peak": predicted,
        "inductor_plan_peak": replayed,
        "measured_peak": measured,
        "saved_bytes": sum(p.saved_bytes or 0 for p in plans),
        "predicted_recompute_ms": 1e3 * sum(p.predicted_recompute_s or 0.0 for p in plans),
        "partition_s": sum(p.partition_seconds for p in plans),
    }


@contextlib.contextmanager
def _partitions() -> Iterator[list[tuple[torch.fx.GraphModule, torch.fx.GraphModule, int]]]:
    """Collect the (forward, backward, number of user outputs) every autoremat partition returns."""
    from autoremat.partitioner import RematPartitioner

    found: list[tuple[torch.fx.GraphModule, torch.fx.GraphModule, int]] = []
    original = RematPartitioner.__call__

    def spy(self, gm, joint_inputs, *, num_fwd_outputs, **kwargs):  # noqa: ANN001, ANN202
        fw, bw = original(self, gm, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)
        found.append((fw, bw, num_fwd_outputs))
        return fw, bw

    RematPartitioner.__call__ = spy
    try:
        yield found
    finally:
        RematPartitioner.__call__ = original


def _inductor_plan_peak(partitions: list, options: object) -> int | None:
    """Sum over the compiled graphs of the step peak in Inductor's own memory plan (a replay of the
    generated wrapper, ``cost_models/inductor_memory.py``); None if Inductor could not be replayed."""
    from autoremat.backend import inductor_patches
    from autoremat.cost_models.inductor_memory import inductor_step_peak

    try:
        return sum(
            inductor_step_peak(fw, bw, n, inductor_patches(options)).peak_bytes for fw, bw, n in partitions
        )
    except Exception as exc:  # noqa: BLE001 - a diagnostic column, not the measurement
        print(f"inductor plan replay failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def table(rows: list[dict]) -> str:
    lines = [
        "| model | compiler | budget | solver / status | gap | saved MiB | predicted peak MiB | "
        "measured peak MiB | predicted/measured | Inductor-plan peak MiB | Inductor-plan/measured | "
        "monotone | predicted recompute ms | partition s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    previous: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["model"], r["compiler"])
        monotone = "" if key not in previous else ("yes" if r["measured_peak"] <= previous[key] else "NO")
        previous[key] = r["measured_peak"]
        gap = "" if r["gap"] is None else f"{r['gap']:.1%}"
        replayed = r.get("inductor_plan_peak")
        plan_mib = "" if replayed is None else f"{replayed / 2**20:.3f}"
        plan_ratio = "" if replayed is None else f"{replayed / max(r['measured_peak'], 1):.3f}"
        lines.append(
            f"| {r['model']} | {r['compiler']} | {r['budget']:g} | {r['solver']} / {r['status']} | {gap} | "
            f"{r['saved_bytes'] / 2**20:.3f} | {r['predicted_peak'] / 2**20:.3f} | "
            f"{r['measured_peak'] / 2**20:.3f} | {r['predicted_peak'] / max(r['measured_peak'], 1):.3f} | "
            f"{plan_mib} | {plan_ratio} | {monotone} | {r['predicted_recompute_ms']:.3f} | "
            f"{r['partition_s']:.2f} |"
        )
    return "\n".join(lines)


def comparison(rows: list[dict], reference: list[dict], slack: float = 1.02) -> str:
    """Measured peaks of ``rows`` next to a reference run of the same cases (e.g. another Inductor
    setting), with the ratio and whether ``rows`` stay non-increasing as the budget falls."""
    ref = {(r["model"], r["compiler"], r["budget"]): r["measured_peak"] for r in reference}
    lines = [
        "| model | budget | reference measured MiB | measured MiB | measured/reference | "
        f"non-increasing ({slack - 1:.0%} slack) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    previous: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["model"], r["compiler"])
        before = ref.get((r["model"], r["compiler"], r["budget"]))
        ok = "" if key not in previous else ("yes" if r["measured_peak"] <= previous[key] * slack else "NO")
        previous[key] = r["measured_peak"]
        measured = r["measured_peak"]
        ref_mib = "" if before is None else f"{before / 2**20:.3f}"
        ratio = "" if before is None else f"{measured / before:.3f}"
        mib = f"{measured / 2**20:.3f}"
        lines.append(f"| {r['model']} | {r['budget']:g} | {ref_mib} | {mib} | {ratio} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import suite

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=tuple(PROFILES))
    parser.add_argument("--compiler", nargs="+", default=["eager"], choices=("eager", "inductor"))
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an autoremat or Inductor option for every case, e.g. allow_buffer_reuse=True (repeatable)",
    )
    parser.add_argument("--from-json", default=None, help="print an earlier run's tables, measure nothing")
    parser.add_argument("--against", default=None, help="JSON of a reference run to compare peaks with")
    args = parser.parse_args(argv)
    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)
        print(table(rows))
        if args.against:
            with open(args.against) as f:
                print("\n" + comparison(rows, json.load(f)))
        return
    names = args.models or [c.name for c in suite(args.profile)]
    rows = []
    for name in names:
        for compiler in args.compiler:
            for budget in BUDGETS:
                rows.append(measure(name, args.profile, compiler, budget, torch.device(args.device), options))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\ntorch {torch.__version__}, device {args.device}, profile {args.profile}, options {options}\n")
    print(table(rows))
    if args.against:
        with open(args.against) as f:
            print("\n" + comparison(rows, json.load(f)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
