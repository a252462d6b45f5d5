"""The ``autoremat`` command line: ``autoremat explain MODULE:FACTORY`` and ``autoremat demo``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from autoremat.explain import DEFAULT_SWEEP, explain


def _load_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"autoremat explain: expected MODULE:FACTORY, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"autoremat explain: cannot load {spec!r}: {exc}") from exc
    return factory


def _budget(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # a size such as 2GiB, or auto; validated by the options parser


def _explain(args: argparse.Namespace) -> int:
    model, inputs = _load_factory(args.factory)()
    options = {"device": args.device} if args.device else {}
    report = explain(model, *inputs, memory_budget=_budget(args.budget), compiler=args.compiler, **options)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json())
        print(f"\nwrote {args.json}")
    if args.plot:
        budgets = [_budget(b) for b in args.sweep] if args.sweep else DEFAULT_SWEEP
        points = report.pareto(budgets, path=args.plot)
        print(f"wrote {args.plot}")
        for p in points:
            print(
                f"  budget {p.budget}: peak {p.peak_bytes} bytes, saved {p.activation_bytes} bytes, "
                f"+{p.predicted_recompute_s * 1e3:.3f} ms"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoremat", description="autoremat command line")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="show what autoremat saves and recomputes for a model")
    ex.add_argument("factory", help="MODULE:FACTORY; the factory returns (model, example_inputs)")
    ex.add_argument("--budget", default="1.0", help="memory_budget: fraction, size (2GiB) or auto")
    ex.add_argument("--compiler", default="eager", choices=("eager", "inductor"))
    ex.add_argument("--device", default=None, help="plan for this device spec (e.g. h100)")
    ex.add_argument("--json", default=None, help="write the report as JSON to this path")
    ex.add_argument("--plot", default=None, help="write a Pareto plot (PNG) of a budget sweep here")
    ex.add_argument("--sweep", nargs="+", default=None, help="budgets for --plot (default 1 .75 .5 .25 .1 0)")
    demo = sub.add_parser("demo", help="run the README demo", add_help=False)
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from autoremat.demo.__main__ import main as demo_main

        return demo_main(args.rest)
    return _explain(args)


if __name__ == "__main__":
    sys.exit(main())
