"""Plan digests of every benchmark model at a few budgets: did a refactor change any decision?

    python -m benchmarks.plan_digests [--profile quick] [--budgets 1.0 0.5 0.0] [--save FILE]
                                      [--compare FILE]

Each model is compiled on the codegen-free path (the partitioner sees the same joint graph as under
Inductor, and no code is generated) and one step is run; the digest of every plan it produced is
printed (``Plan.digest``: saved names and bytes, recomputed ops, budget, solver, status). With
``--save`` the digests are written as JSON; with ``--compare`` they are checked against such a file and
every difference is listed, so a change that should keep behaviour shows that it does.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

from benchmarks.models import PROFILES

DEFAULT_BUDGETS = (1.0, 0.5, 0.0)


def digests(profile: str, budgets: tuple[float, ...]) -> dict[str, list[dict]]:
    """``"model@budget"`` → one record per compiled graph (digest, solver, status, saved bytes)."""
    import autoremat
    from benchmarks.models import suite

    result: dict[str, list[dict]] = {}
    for case in suite(profile):
        for budget in budgets:
            torch.manual_seed(0)
            model = case.build().train()
            batch = case.batch(torch.device("cpu"))
            torch.compiler.reset()
            before = autoremat.plan.recorded_count()
            backend = autoremat.backend(memory_budget=budget, compiler="eager")
            torch.compile(model, backend=backend)(*batch).backward()
            result[f"{case.name}@{budget:g}"] = [
                {
                    "digest": plan.digest()[:16],
                    "solver": plan.solver,
                    "status": plan.status,
                    "saved_bytes": plan.saved_bytes,
                    "recomputed": len(plan.recomputed),
                }
                for plan in autoremat.plan.recorded_since(before)
            ]
    return result


def compare(current: dict[str, list[dict]], reference: dict[str, list[dict]]) -> list[str]:
    """Human-readable differences between two digest tables (empty when every plan is the same)."""
    changed = []
    for key in sorted(set(current) | set(reference)):
        now, before = current.get(key), reference.get(key)
        if now is None or before is None:
            changed.append(f"{key}: only in {'reference' if now is None else 'current run'}")
        elif [p["digest"] for p in now] != [p["digest"] for p in before]:
            changed.append(f"{key}: {before} -> {now}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=tuple(PROFILES))
    parser.add_argument("--budgets", type=float, nargs="+", default=DEFAULT_BUDGETS)
    parser.add_argument("--save", type=pathlib.Path)
    parser.add_argument("--compare", type=pathlib.Path)
    args = parser.parse_args(argv)
    table = digests(args.profile, tuple(args.budgets))
    print("| model@budget | graph | digest | solver | status | saved bytes | recomputed ops |")
    print("|---|---:|---|---|---|---:|---:|")
    for key, plans in table.items():
        for i, p in enumerate(plans):
            print(
                f"| {key} | {i} | {p['digest']} | {p['solver']} | {p['status']} | {p['saved_bytes']} "
                f"| {p['recomputed']} |"
            )
    if args.save:
        args.save.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    if args.compare:
        changed = compare(table, json.loads(args.compare.read_text()))
        print(f"\n{len(changed)} of {len(table)} cases changed" + (":" if changed else ""))
        for line in changed:
            print(f"- {line}")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
