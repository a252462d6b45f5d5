"""Measure vs estimate, per model and budget, under Inductor (CPU).

    python -m benchmarks.inductor_plan.run_grid --models gpt2 --budgets 1 0.5 0.25 0 \
        [--config allow_buffer_reuse=False ...] [--methods sched wrapper] [--out rows.jsonl] [--time]

One JSON row per (model, budget): autoremat's predicted peak, measured peak (cpu_peak_bytes of one
fwd+bwd), each estimator's step peak and cost, step time.
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import torch


def parse_cfg(items):
    out = {}
    for it in items or []:
        k, v = it.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except Exception:  # noqa: BLE001
            out[k] = v
    return out


def run_one(model_name, budget, cfg, methods, do_time, profile="quick"):
    from autoremat.passes.partitioner import RematPartitioner

    import autoremat
    from autoremat.measure import cpu_peak_bytes, median_seconds
    from benchmarks.inductor_plan import inductor_peak as ip
    from benchmarks.models import case_by_name

    captured = []
    orig = RematPartitioner.__call__

    def wrapped(self, gm, joint_inputs, *, num_fwd_outputs, **kw):
        fw, bw = orig(self, gm, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)
        captured.append((fw, bw, num_fwd_outputs))
        return fw, bw

    RematPartitioner.__call__ = wrapped
    try:
        case = case_by_name(profile, model_name)
        torch.manual_seed(0)
        model = case.build().train()
        batch = case.batch(torch.device("cpu"))
        torch.compiler.reset()
        before = autoremat.plan.recorded_count()
        compiled = torch.compile(model, backend=autoremat.backend(memory_budget=budget, **cfg))
        t0 = time.perf_counter()
        compiled(*batch).backward()
        compile_s = time.perf_counter() - t0
        plans = autoremat.plan.recorded_since(before)
        model.zero_grad(set_to_none=True)

        def step():
            compiled(*batch).backward()
            model.zero_grad(set_to_none=True)

        measured = cpu_peak_bytes(lambda: compiled(*batch).backward())
        model.zero_grad(set_to_none=True)
        measured2 = cpu_peak_bytes(lambda: compiled(*batch).backward())
        model.zero_grad(set_to_none=True)
        step_s = median_seconds(step, repeats=30, warmup=3) if do_time else None
    finally:
        RematPartitioner.__call__ = orig
    row = {
        "model": model_name,
        "budget": budget,
        "config": cfg,
        "graphs": len(captured),
        "predicted": sum(p.predicted_peak_bytes or 0 for p in plans),
        "saved": sum(p.saved_bytes or 0 for p in plans),
        "measured": measured,
        "measured2": measured2,
        "compile_s": compile_s,
        "step_s": step_s,
        "partition_s": sum(p.partition_seconds for p in plans),
    }
    # inductor options that the backend passes through, for the estimator
    for method in methods:
        est_peak = 0
        secs = {}
        parts = []
        t0 = time.perf_counter()
        try:
            for fw, bw, nfo in captured:
                e = ip.estimate_step_peak(fw, bw, nfo, method=method, config_patches=cfg)
                est_peak += e.peak  # one graph per model here
                parts.append(
                    {"fw": e.fw_peak, "bw": e.bw_peak, "fwd_end": e.fwd_end_bytes, "saved": e.saved_bytes}
                )
                for k, v in e.seconds.items():
                    secs[k] = secs.get(k, 0) + v
            row[method] = est_peak
            row[method + "_parts"] = parts
            row[method + "_secs"] = {k: round(v, 4) for k, v in secs.items()}
            row[method + "_total_s"] = round(time.perf_counter() - t0, 3)
        except Exception as exc:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            row[method] = None
            row[method + "_error"] = f"{type(exc).__name__}: {exc}"
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["gpt2", "llama", "deep_mlp", "resnet", "long_context"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.0])
    ap.add_argument("--config", nargs="*", default=[])
    ap.add_argument("--methods", nargs="*", default=["sched", "wrapper"])
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = parse_cfg(a.config)
    for m in a.models:
        for b in a.budgets:
            row = run_one(m, b, cfg, a.methods, a.time)
            line = json.dumps(row)
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
