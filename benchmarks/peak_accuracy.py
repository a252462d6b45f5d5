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

from autoremat import _torch_compat as compat
from autoremat.measure import step_peak_bytes
from benchmarks.models import PROFILES

BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.0)


def measure(
    model_name: str,
    profile: str,
    compiler: str,
    budget: float | int,
    device: torch.device,
    options: dict | None = None,
) -> dict:
    """One autoremat case; ``budget`` a fraction (float) or bytes (int). A byte budget is compiled
    with ``strict=True``: the row says whether it was refused."""
    import autoremat
    from benchmarks.models import case_by_name

    case = case_by_name(profile, model_name)
    torch.manual_seed(0)
    model = case.build().to(device).train()
    batch = case.batch(device)
    torch.compiler.reset()
    before = autoremat.plan.recorded_count()
    kind = "bytes" if isinstance(budget, int) else "fraction"
    chosen = {**({"strict": True} if kind == "bytes" else {}), **(options or {})}
    backend = autoremat.backend(memory_budget=budget, compiler=compiler, **chosen)
    compiled = torch.compile(model, backend=backend)
    refused = None
    with _partitions() as partitions, torch.compiler.config.patch(force_disable_caches=True):
        try:
            compiled(*batch).backward()  # compile cold: a cache hit would skip the partitioner
        except Exception as exc:  # noqa: BLE001 - strict mode's refusal, reported in the row
            if "strict=True" not in str(exc):
                raise
            refused = str(exc).splitlines()[0]
    if refused is not None:  # measure what the least-memory plan reaches, without strict
        unrefused = measure(
            model_name, profile, compiler, budget, device, {**(options or {}), "strict": False}
        )
        return {**unrefused, "refused": refused}
    plans = autoremat.plan.recorded_since(before)
    replayed = _inductor_plan_peak(partitions, backend.options) if compiler == "inductor" else None
    model.zero_grad(set_to_none=True)

    def step() -> None:
        compiled(*batch).backward()

    measured = step_peak_bytes(step, device)
    predicted = sum(p.predicted_peak_bytes or 0 for p in plans)
    gaps = [p.optimality_gap for p in plans if p.optimality_gap is not None]
    return {
        "model": model_name,
        "compiler": compiler,
        "budget": budget,
        "budget_kind": kind,
        "refused": None,
        "graphs": len(plans),
        "solver": "+".join(sorted({p.solver for p in plans})),
        "status": "+".join(sorted({p.status for p in plans})),
        "gap": max(gaps) if gaps else None,
        "predicted_peak": predicted,
        "least_peak": sum(p.least_bytes or 0 for p in plans),
        "runtime_optimal_peak": sum(p.runtime_optimal_bytes or 0 for p in plans),
        "peak_model": "+".join(sorted({str(p.solver_stats.get("peak_model", "")) for p in plans})),
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


#: the byte budgets measured per model: these shares of the way from the least to the runtime-optimal
#: predicted peak (autoremat's, at budget 0.0)
BYTE_SHARES = (0.25, 0.5, 0.75)
#: torch's own strategies measured for the budget-0.0 comparison
TORCH_BUDGETS = BUDGETS


def measure_torch(
    model_name: str, profile: str, strategy: str, budget: float | None, device: torch.device
) -> dict:
    """A reference row: torch.compile (Inductor, torch's partitioner) with
    ``activation_memory_budget=budget`` (strategy "torch_budget"), or with each block under
    non-reentrant ``torch.utils.checkpoint`` (strategy "checkpoint")."""
    from benchmarks.models import case_by_name

    case = case_by_name(profile, model_name)
    torch.manual_seed(0)
    model = case.build().to(device).train()
    model.checkpoint_blocks = strategy == "checkpoint"
    batch = case.batch(device)
    torch.compiler.reset()
    patch = {} if budget is None else {"activation_memory_budget": budget}
    with compat.functorch_config.patch(patch), torch.compiler.config.patch(force_disable_caches=True):
        compiled = torch.compile(model)
        compiled(*batch).backward()
        model.zero_grad(set_to_none=True)
        measured = step_peak_bytes(lambda: compiled(*batch).backward(), device)
    return {"model": model_name, "strategy": strategy, "budget": budget, "measured_peak": measured}


def byte_budgets(rows: list[dict], model: str, compiler: str) -> list[int]:
    """``BYTE_SHARES`` of the way between the least and the runtime-optimal predicted peak."""
    zero = next(r for r in rows if (r["model"], r["compiler"], r["budget"]) == (model, compiler, 0.0))
    low, high = zero["least_peak"], zero["runtime_optimal_peak"]
    return [int(low + share * (high - low)) for share in BYTE_SHARES]


def bytes_table(rows: list[dict], slack: float = 1.02) -> str:
    """Byte budgets: measured against the budget, and whether strict mode accepted it."""
    lines = [
        "| model | compiler | budget MiB | strict mode | predicted MiB | measured MiB | measured/budget | "
        f"within budget (+{slack - 1:.0%}) | predicted/measured |",
        "|---|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r.get("budget_kind") != "bytes":
            continue
        ratio = r["measured_peak"] / max(r["budget"], 1)
        verdict = "yes" if ratio <= slack else ("refused" if r["refused"] else "NO")
        lines.append(
            f"| {r['model']} | {r['compiler']} | {r['budget'] / 2**20:.3f} | "
            f"{'refused' if r['refused'] else 'accepted'} | {r['predicted_peak'] / 2**20:.3f} | "
            f"{r['measured_peak'] / 2**20:.3f} | {ratio:.3f} | {verdict} | "
            f"{r['predicted_peak'] / max(r['measured_peak'], 1):.3f} |"
        )
    return "\n".join(lines)


def references_table(rows: list[dict], references: list[dict]) -> str:
    """autoremat at budget 0.0 against the lowest peak torch's knob reaches at any budget and against
    per-layer checkpointing, all measured under Inductor in this run."""
    lines = [
        "| model | autoremat@0 MiB | torch knob lowest MiB (at) | ratio | per-layer checkpoint MiB | ratio | "
        "no higher than both |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if (
            r["budget"] != 0.0
            or r.get("budget_kind", "fraction") != "fraction"
            or r["compiler"] != "inductor"
        ):
            continue
        knob = [x for x in references if x["model"] == r["model"] and x["strategy"] == "torch_budget"]
        ckpt = next(
            (x for x in references if x["model"] == r["model"] and x["strategy"] == "checkpoint"), None
        )
        if not knob or ckpt is None:
            continue
        lowest = min(knob, key=lambda x: x["measured_peak"])
        ours = r["measured_peak"]
        ok = "yes" if ours <= lowest["measured_peak"] and ours <= ckpt["measured_peak"] else "NO"
        lines.append(
            f"| {r['model']} | {ours / 2**20:.3f} | "
            f"{lowest['measured_peak'] / 2**20:.3f} ({lowest['budget']:g}) | "
            f"{ours / lowest['measured_peak']:.3f} | {ckpt['measured_peak'] / 2**20:.3f} | "
            f"{ours / ckpt['measured_peak']:.3f} | {ok} |"
        )
    return "\n".join(lines)


def _fraction_rows_marked(rows: list[dict], slack: float = 1.02) -> list[tuple[dict, str]]:
    """The fraction-budget rows in order, each with "yes" when its measured peak is within ``slack``
    of the lowest peak a looser budget of the same model and compiler reached, "NO" when above, and
    "" for the loosest budget."""
    lowest: dict[tuple[str, str], int] = {}
    marked = []
    for r in rows:
        if r.get("budget_kind", "fraction") != "fraction":
            continue
        key = (r["model"], r["compiler"])
        mark = "" if key not in lowest else ("yes" if r["measured_peak"] <= lowest[key] * slack else "NO")
        lowest[key] = min(r["measured_peak"], lowest.get(key, r["measured_peak"]))
        marked.append((r, mark))
    return marked


def table(rows: list[dict]) -> str:
    lines = [
        "| model | compiler | budget | solver / status | gap | saved MiB | predicted peak MiB | "
        "measured peak MiB | predicted/measured | Inductor-plan peak MiB | Inductor-plan/measured | "
        "non-increasing (2% slack) | predicted recompute ms | partition s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r, monotone in _fraction_rows_marked(rows):
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
    for r, ok in _fraction_rows_marked(rows, slack):
        before = ref.get((r["model"], r["compiler"], r["budget"]))
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
    parser.add_argument(
        "--byte-budgets", action="store_true", help="also three byte budgets per model, in strict mode"
    )
    parser.add_argument(
        "--references",
        action="store_true",
        help="also torch's activation_memory_budget at every budget and per-layer checkpointing (Inductor)",
    )
    parser.add_argument("--from-json", default=None, help="print an earlier run's tables, measure nothing")
    parser.add_argument("--against", default=None, help="JSON of a reference run to compare peaks with")
    args = parser.parse_args(argv)
    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, references = (saved, []) if isinstance(saved, list) else (saved["rows"], saved["references"])
        _print_tables(rows, references, args.against)
        return
    device = torch.device(args.device)
    names = args.models or [c.name for c in suite(args.profile)]
    rows: list[dict] = []
    references: list[dict] = []
    for name in names:
        for compiler in args.compiler:
            for budget in BUDGETS:
                rows.append(measure(name, args.profile, compiler, budget, device, options))
                print(json.dumps(rows[-1]), flush=True)
            if args.byte_budgets:
                for cap in byte_budgets(rows, name, compiler):
                    rows.append(measure(name, args.profile, compiler, cap, device, options))
                    print(json.dumps(rows[-1]), flush=True)
        if args.references:
            for strategy, budget in [("torch_budget", b) for b in TORCH_BUDGETS] + [("checkpoint", None)]:
                references.append(measure_torch(name, args.profile, strategy, budget, device))
                print(json.dumps(references[-1]), flush=True)
    print(f"\ntorch {torch.__version__}, device {args.device}, profile {args.profile}, options {options}\n")
    _print_tables(rows, references, args.against)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "references": references}, f, indent=1)


def _print_tables(rows: list[dict], references: list[dict], against: str | None) -> None:
    print(table(rows))
    if any(r.get("budget_kind") == "bytes" for r in rows):
        print("\n" + bytes_table(rows))
    if references:
        print("\n" + references_table(rows, references))
    if against:
        with open(against) as f:
            saved = json.load(f)
        print("\n" + comparison(rows, saved if isinstance(saved, list) else saved["rows"]))


if __name__ == "__main__":
    main()
