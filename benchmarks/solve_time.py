"""Budget-solver time on big joint graphs: the largest benchmark graph and a >= 5,000-node one.

    python -m benchmarks.solve_time [--layers 30] [--budgets 0.5 0.1] [--time-limit 5]

Each joint graph is captured once (codegen-free decompositions, as Inductor sees them) and partitioned
by autoremat at each budget. Printed per row: joint nodes, MILP problem size (binaries, rows), solves,
MILP seconds, the budget solver's seconds (MILPs, min-cuts and liveness simulations, bounded by
``solver_time_limit``), total partition seconds (plus analysis and torch's graph extraction), the
solver whose plan won, its status and the MILP's relative gap.
"""

from __future__ import annotations

import argparse
import time

import torch

import autoremat
from autoremat.demo.model import GPT, GPTConfig, example_batch
from autoremat.measure import CapturedJoint, capture_joint_graphs
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner


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


def _row(name: str, joint: CapturedJoint, budget: float, time_limit: float) -> str:
    options = resolve_options({"memory_budget": budget, "compiler": "eager", "solver_time_limit": time_limit})
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
    stats = plan.solver_stats
    gap = "" if plan.optimality_gap is None else f"{plan.optimality_gap:.1%}"
    return (
        f"| {name} | {len(joint.gm.graph.nodes)} | {budget:g} | {stats.get('milp_binaries', '')} | "
        f"{stats.get('milp_rows', '')} | {stats.get('milp_solves', 0)} | "
        f"{stats.get('milp_seconds', 0.0):.2f} | {stats.get('solve_seconds', 0.0):.2f} | "
        f"{seconds:.2f} | {plan.solver} / {plan.status} | {stats.get('milp_last_status', '')} | {gap} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=30, help="GPT depth (30: ~5,100 nodes)")
    parser.add_argument("--profile", default="quick", help="benchmark profile for the largest model graph")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.1])
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; solver_time_limit {args.time_limit:g} s\n")
    print(
        "| graph | joint nodes | budget | MILP binaries | MILP rows | MILP solves | MILP s | solve s | "
        "partition s | plan | last HiGHS status | gap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for name, joint in (_largest_benchmark_graph(args.profile), _deep_gpt(args.layers)):
        for budget in args.budgets:
            print(_row(name, joint, budget, args.time_limit), flush=True)


if __name__ == "__main__":
    main()
