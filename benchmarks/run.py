"""Side-by-side benchmark: autoremat against PyTorch's own strategies, each case in a fresh process.

    python -m benchmarks.run --quick                      # CPU, budgets 0.5 and 0.1
    python -m benchmarks.run --quick --budgets 0.75 0.5 0.25 0.1 0.0
    python -m benchmarks.run --profile gpu --out DIR      # the GPU-sized suite (see gpu.sh)

Strategies per model: eager; eager + per-layer torch.utils.checkpoint (non-reentrant); torch.compile
default; torch.compile with torch._functorch.config.activation_memory_budget = b; autoremat at the
same b; autoremat at a byte budget (85% of its own predicted peak at 1.0). Per case: gradient parity
vs eager, activation bytes saved for backward (saved-tensor hooks), measured peak memory of a
forward + backward (CUDA max_memory_allocated, or the CPU allocator's profiler events replayed),
autoremat's predicted peak, median step time, first-step (compile) time and partition time (each run
gets a fresh Inductor cache, shared by its cases, so compile times after the first case of a model
include kernel reuse). Outputs a markdown table, JSON and a Pareto plot (measured peak vs step time)
per model; ratios are against torch.compile default in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from autoremat import _torch_compat as compat
from autoremat.measure import cpu_peak_bytes, max_relative_error, measure_saved_bytes, median_seconds
from benchmarks.models import PROFILES

RESULT_PREFIX = "RESULT "
#: the byte-budget case: this share of autoremat's predicted peak at budget 1.0
BYTE_BUDGET_SHARE = 0.85


@dataclass(frozen=True)
class CaseSpec:
    model: str
    strategy: str  # eager | checkpoint | compile | torch_budget | autoremat
    budget: str | None  # fraction or byte size, for the budgeted strategies
    profile: str
    device: str
    steps: int

    @property
    def label(self) -> str:
        return self.strategy if self.budget is None else f"{self.strategy}@{self.budget}"


# ---------------------------------------------------------------- child: one case in this process


def _grads(model: torch.nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _strategy(spec: CaseSpec, model: torch.nn.Module):
    """(step callable, context manager active while it runs)."""
    ctx = contextlib.nullcontext()
    if spec.strategy == "eager":
        return model, ctx
    if spec.strategy == "checkpoint":
        model.checkpoint_blocks = True
        return model, ctx
    if spec.strategy == "compile":
        return torch.compile(model), ctx
    if spec.strategy == "torch_budget":
        return torch.compile(model), compat.functorch_config.patch(
            activation_memory_budget=float(spec.budget)
        )
    if spec.strategy == "autoremat":
        import autoremat

        budget: float | str = float(spec.budget) if "." in spec.budget else spec.budget
        return torch.compile(model, backend=autoremat.backend(memory_budget=budget)), ctx
    raise ValueError(f"unknown strategy {spec.strategy!r}")


def run_case(spec: CaseSpec) -> dict:
    """Measure one (model, strategy, budget) case; returns a JSON-able dict."""
    import autoremat
    from benchmarks.models import case_by_name

    device = torch.device(spec.device)
    case = case_by_name(spec.profile, spec.model)
    torch.manual_seed(0)
    base = case.build().to(device).train()
    batch = case.batch(device)
    reference = copy.deepcopy(base)
    reference(*batch).backward()
    ref_grads = _grads(reference)
    del reference

    model = copy.deepcopy(base)
    fn, ctx = _strategy(spec, model)
    exclude = [*model.parameters(), *model.buffers(), *batch]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        fn(*batch).backward()

    with ctx:
        autoremat.clear_plans()
        t0 = time.perf_counter()
        step()
        sync()
        first_step_s = time.perf_counter() - t0
        plans = autoremat.recent_plans()

        model.zero_grad(set_to_none=True)
        loss, saved = measure_saved_bytes(lambda: fn(*batch), exclude)
        loss.backward()
        parity = max_relative_error(_grads(model), ref_grads)

        # Peak of forward + backward above what was live before it, gradients already freed (freeing
        # them inside the window would lower the running total and hide part of the peak).
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
            fn(*batch).backward()
            sync()
            peak = torch.cuda.max_memory_allocated() - base_mem
        else:
            peak = cpu_peak_bytes(lambda: fn(*batch).backward())
        step_s = median_seconds(step, repeats=spec.steps)

    predicted = sum(p.saved_bytes or 0 for p in plans) if plans else None
    predicted_peak = sum(p.predicted_peak_bytes or 0 for p in plans) if plans else None
    return {
        **asdict(spec),
        "label": spec.label,
        "grad_max_rel_err": parity,
        "saved_bytes": saved.nbytes,
        "peak_bytes": peak,
        "predicted_saved_bytes": predicted,
        "predicted_peak_bytes": predicted_peak,
        "plan_status": "+".join(sorted({f"{p.solver}/{p.status}" for p in plans})) if plans else None,
        "target_bytes": sum(p.target_bytes or 0 for p in plans) if plans else None,
        "step_s": step_s,
        "first_step_s": first_step_s,
        "compile_s": max(first_step_s - step_s, 0.0),
        "partition_s": sum(p.partition_seconds for p in plans) if plans else None,
    }


# ---------------------------------------------------------------- parent: the suite


def _run_subprocess(spec: CaseSpec, timeout_s: float, cache_dir: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--case", json.dumps(asdict(spec))]
    # One fresh Inductor cache per run, shared by its cases: kernels common to several strategies are
    # built once (on 2 CPU cores that halves the run), nothing leaks in from earlier runs.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**asdict(spec), "label": spec.label, "error": f"timed out after {timeout_s:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {
        **asdict(spec),
        "label": spec.label,
        "error": out.stderr.strip().splitlines()[-1:] or ["no output"],
    }


def plan_cases(model: str, args: argparse.Namespace) -> list[CaseSpec]:
    def spec(strategy: str, budget: str | None = None) -> CaseSpec:
        return CaseSpec(model, strategy, budget, args.profile, args.device, args.steps)

    cases = [spec("eager"), spec("checkpoint"), spec("compile"), spec("autoremat", "1.0")]
    for b in args.budgets:
        cases.append(spec("torch_budget", str(b)))
        if b != 1.0:
            cases.append(spec("autoremat", str(b)))
    return cases


def add_ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r["strategy"] == "compile" and "error" not in r), None)
    for r in rows:
        if base is None or "error" in r:
            continue
        r["saved_vs_compile"] = r["saved_bytes"] / max(base["saved_bytes"], 1)
        r["peak_vs_compile"] = r["peak_bytes"] / max(base["peak_bytes"], 1)
        r["time_vs_compile"] = r["step_s"] / base["step_s"]


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | strategy | grad err | saved MiB | vs compile | peak MiB | vs compile |"
        " predicted peak MiB | step ms | vs compile | compile s | partition ms | plan |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    mib = 2**20
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['label']} | error: {r['error']} ||||||||||||")
            continue
        pred = "" if r.get("predicted_peak_bytes") is None else f"{r['predicted_peak_bytes'] / mib:.2f}"
        part = "" if r["partition_s"] is None else f"{r['partition_s'] * 1e3:.0f}"
        lines.append(
            f"| {r['model']} | {r['label']} | {r['grad_max_rel_err']:.1e} | {r['saved_bytes'] / mib:.2f} | "
            f"{r.get('saved_vs_compile', float('nan')):.2f} | {r['peak_bytes'] / mib:.2f} | "
            f"{r.get('peak_vs_compile', float('nan')):.2f} | {pred} | {r['step_s'] * 1e3:.2f} | "
            f"{r.get('time_vs_compile', float('nan')):.2f} | {r['compile_s']:.1f} | {part} | "
            f"{r.get('plan_status') or ''} |"
        )
    return "\n".join(lines)


def pareto_plot(model: str, rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    families = {"torch_budget": "torch.compile + activation_memory_budget", "autoremat": "autoremat"}
    ok = [r for r in rows if "error" not in r]
    for strategy, label in families.items():
        pts = sorted(
            (r["step_s"] * 1e3, r["peak_bytes"] / 2**20, r["budget"]) for r in ok if r["strategy"] == strategy
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            for x, y, b in pts:
                ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for strategy, marker in (("eager", "s"), ("checkpoint", "^"), ("compile", "D")):
        for r in ok:
            if r["strategy"] == strategy:
                ax.scatter(
                    [r["step_s"] * 1e3], [r["peak_bytes"] / 2**20], marker=marker, label=strategy, zorder=3
                )
    ax.set_xlabel("median step time (ms)")
    ax.set_ylabel("measured peak memory of a step (MiB)")
    ax.set_title(f"{model}: memory vs time (lower-left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="the CPU quick profile (about 10 minutes)")
    parser.add_argument("--profile", choices=tuple(PROFILES), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/latest")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--readme", default=None, help="splice the table into this README's results block")
    args = parser.parse_args(argv)

    if args.case:
        print(RESULT_PREFIX + json.dumps(run_case(CaseSpec(**json.loads(args.case)))), flush=True)
        return 0

    from benchmarks.models import suite

    args.profile = args.profile or ("quick" if args.quick or args.device == "cpu" else "gpu")
    quick = args.profile == "quick"
    args.budgets = args.budgets or ([0.5, 0.1] if quick else [0.75, 0.5, 0.25, 0.1, 0.0])
    args.steps = args.steps or (3 if quick else 20)
    models = args.models or [c.name for c in suite(args.profile)]
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    print(
        f"autoremat benchmark {stamp}: {machine()}, torch {torch.__version__}, profile {args.profile}",
        flush=True,
    )

    all_rows: list[dict] = []
    started = time.perf_counter()
    cache_dir = tempfile.mkdtemp(prefix="autoremat-bench-inductor-")
    for model in models:
        rows = []
        cases = plan_cases(model, args)
        for spec in cases:
            t0 = time.perf_counter()
            row = _run_subprocess(spec, args.timeout, cache_dir)
            rows.append(row)
            if spec.strategy == "autoremat" and spec.budget == "1.0" and "error" not in row:
                byte_budget = f"{int(row['predicted_peak_bytes'] * BYTE_BUDGET_SHARE)}"
                cases.append(CaseSpec(model, "autoremat", byte_budget, args.profile, args.device, args.steps))
            status = row.get("error") or (
                f"saved {row['saved_bytes'] / 2**20:.2f} MiB, step {row['step_s'] * 1e3:.1f} ms, "
                f"grad err {row['grad_max_rel_err']:.0e}"
            )
            print(f"  [{model}] {spec.label}: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
        add_ratios(rows)
        all_rows += rows
        pareto_plot(model, rows, os.path.join(args.out, f"pareto_{model}.png"))

    table = markdown(all_rows)
    header = (
        f"Measured {stamp} on {machine()}, torch {torch.__version__}, profile `{args.profile}`, "
        f"by `python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}`."
    )
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {"machine": machine(), "torch": torch.__version__, "date": stamp, "rows": all_rows}, f, indent=2
        )
    print("\n" + header + "\n\n" + table)
    print(
        f"\nwrote {args.out}/results.md, results.json, pareto_*.png ({time.perf_counter() - started:.0f} s)"
    )
    if args.readme:
        splice_readme(args.readme, header + "\n\n" + table)
    return 0


START, END = "<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->"


def splice_readme(path: str, text: str) -> None:
    """Replace the README's generated results block (between the markers) with ``text``."""
    with open(path) as f:
        readme = f.read()
    if START not in readme or END not in readme:
        raise SystemExit(f"{path} has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
