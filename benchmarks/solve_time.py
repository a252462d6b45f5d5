"""Budget-solver time on big joint graphs: GPTs of 2k, 5k, 10k and 20k joint nodes, autoremat side by
side with torch's own budget partitioner (``activation_memory_budget``) on the same graphs.

    python -m benchmarks.solve_time [--layers 12 29 57 114] [--budgets 0.5] [--largest-suite-graph]

Each joint graph is captured once (codegen-free decompositions, as Inductor sees them) and partitioned
by both, each on a fresh copy. Printed per row: joint nodes, repeated blocks found, MILP problem size
(binaries, rows: of the block-restricted program above ``FULL_PROGRAM_MAX_CANDIDATES`` candidates),
solves and seconds, autoremat's partition seconds, torch's, their ratio, the solver whose plan won, its
status and proven gap (empty when none is proven), and whether the safety-net time limit stopped the
search (it should never). A second table splits autoremat's partition time by what it is made of
(``benchmarks/stages.py``).
"""

from __future__ import annotations

import argparse
import time

import torch

import autoremat
from autoremat import _torch_compat as compat
from autoremat.demo.model import GPT, GPTConfig, example_batch
from autoremat.measure import CapturedJoint, capture_joint_graphs
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner
from benchmarks import stages


def _largest_benchmark_graph(profile: str) -> tuple[str, CapturedJoint]:
    from benchmarks.models import suite

    best: tuple[str, CapturedJoint] | None = None
    for case in suite(profile):
        torch.manual_seed(0)
        joints = capture_joint_graphs(case.build(), *case.batch(torch.device("cpu")))
        for joint in joints:
            if best is None or len(joint.gm.graph.nodes) > len(best[1].gm.graph.nodes):
                best = (f"{case.name} ({profile})", joint)
    assert best is not None
    return best


def _deep_gpt(layers: int) -> tuple[str, CapturedJoint]:
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=layers, n_head=4, d_model=64)
    torch.manual_seed(0)
    (joint,) = capture_joint_graphs(GPT(cfg), *example_batch(cfg, 2, 64))
    return f"GPT, {layers} layers", joint


def _torch_seconds(joint: CapturedJoint, budget: float) -> float:
    gm = joint.fresh_copy()
    start = time.perf_counter()
    with compat.functorch_config.patch(activation_memory_budget=budget):
        compat.torch_min_cut_partition(
            gm,
            joint.joint_inputs,
            num_fwd_outputs=joint.num_fwd_outputs,
            static_lifetime_input_indices=joint.static_lifetime_input_indices,
        )
    return time.perf_counter() - start


def _row(name: str, joint: CapturedJoint, budget: float) -> tuple[str, str]:
    options = resolve_options({"memory_budget": budget, "compiler": "eager"})
    partitioner = RematPartitioner(options)
    start = time.perf_counter()
    partitioner(
        joint.fresh_copy(),
        joint.joint_inputs,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    seconds = time.perf_counter() - start
    plan = autoremat.recent_plans()[-1]
    theirs = _torch_seconds(joint, budget)
    stats = plan.solver_stats
    gap = "" if plan.optimality_gap is None else f"{plan.optimality_gap:.1%}"
    stopped = "yes" if any("time limit" in note for note in plan.notes) else "no"
    split = stages.grouped(stats.get("stage_seconds", {}))  # empty for a fallback plan
    breakdown = f"| {name} | {budget:g} | {seconds:.2f} | {stages.cells(split)} |"
    return (
        f"| {name} | {len(joint.gm.graph.nodes)} | {stats.get('blocks') or ''} | {budget:g} | "
        f"{stats.get('milp_binaries', '')} | {stats.get('milp_rows', '')} | "
        f"{stats.get('milp_solves', 0)} | {stats.get('milp_seconds', 0.0):.2f} | {seconds:.2f} | "
        f"{theirs:.2f} | {seconds / theirs:.2f} | {plan.solver} / {plan.status} | {gap} | {stopped} |"
    ), breakdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 29, 57, 114])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5])
    parser.add_argument(
        "--largest-suite-graph", metavar="PROFILE", help="also the largest graph of a benchmark profile"
    )
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; default solver_time_limit (a safety net)\n")
    print(
        "| graph | joint nodes | blocks | budget | MILP binaries | MILP rows | MILP solves | MILP s | "
        "autoremat s | torch s | ratio | plan | gap | time limit hit |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    graphs = [_deep_gpt(layers) for layers in args.layers]
    if args.largest_suite_graph:
        graphs.insert(0, _largest_benchmark_graph(args.largest_suite_graph))
    breakdowns = []
    for name, joint in graphs:
        for budget in args.budgets:
            row, breakdown = _row(name, joint, budget)
            print(row, flush=True)
            breakdowns.append(breakdown)
    print("\nWhere autoremat's partition time went (benchmarks/stages.py: wall seconds on the search's")
    print("thread, each charged to the innermost stage; solves run ahead show as the wait, if any):\n")
    print(f"| graph | budget | autoremat s {stages.header()}")
    print("|---|---:|---:|" + "---:|" * len(stages.COLUMNS))
    print("\n".join(breakdowns))


if __name__ == "__main__":
    main()
