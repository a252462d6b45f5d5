"""Markdown tables from run_grid.py JSONL files.   python tables.py default.jsonl [more.jsonl ...]"""

import json
import sys

MiB = 2**20


def load(path):
    return [json.loads(x) for x in open(path) if x.strip()]


def accuracy(rows):
    out = [
        "| model | budget | autoremat pred | measured | pred/meas | sched est | sched/meas "
        "| sched s (lower+sched, fw+bw) | wrapper est | wrapper/meas "
        "| wrapper s (lower+codegen, fw+bw) | partition s | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["measured"]

        def f(k, r=r, m=m):
            v = r.get(k)
            return ("err", "") if v is None else (f"{v / MiB:.3f}", f"{v / m:.3f}")

        s, sr = f("sched")
        w, wr = f("wrapper")
        out.append(
            f"| {r['model']} | {r['budget']:g} | {r['predicted'] / MiB:.3f} | {m / MiB:.3f} | "
            f"{r['predicted'] / m:.3f} | {s} | {sr} | {r.get('sched_total_s', '')} | {w} | {wr} | "
            f"{r.get('wrapper_total_s', '')} | {r['partition_s']:.2f} | {r['compile_s']:.1f} |"
        )
    return "\n".join(out)


def monotone(rows_by_cfg: dict[str, list[dict]]):
    models = []
    for rows in rows_by_cfg.values():
        for r in rows:
            if r["model"] not in models:
                models.append(r["model"])
    out = ["| config | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for name, rows in rows_by_cfg.items():
        cells = []
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            rs.sort(key=lambda r: -r["budget"])
            vals, prev = [], None
            for r in rs:
                v = r["measured"] / MiB
                s = f"{v:.3f}"
                if prev is not None and r["measured"] > prev * 1.02:
                    s = f"**{s}**"
                vals.append(s)
                prev = r["measured"] if prev is None else min(prev, r["measured"])
            t = [r.get("step_s") for r in rs if r.get("step_s")]
            cells.append(" / ".join(vals) + (f" ({1e3 * min(t):.2f}-{1e3 * max(t):.2f} ms)" if t else ""))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"\n### {p}\n")
        print(accuracy(load(p)))
    print()
    print(monotone({p: load(p) for p in sys.argv[1:]}))
