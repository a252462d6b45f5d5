"""Partition time: autoremat's partitioner vs torch's min-cut partitioner on the same joint graphs.

    python -m benchmarks.partition_time [--layers 2 8 24]

Each GPT depth is captured once; both partitioners then run on fresh copies of that same joint graph
(both include DCE and CSE), repeated, median reported. Prints a markdown table with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoremat import _torch_compat as compat
from autoremat.demo.model import GPT, GPTConfig, example_batch
from autoremat.measure import CapturedJoint, capture_joint_graphs
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner


def _time(partition_fn, joint: CapturedJoint, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gm = joint.fresh_copy()
        t0 = time.perf_counter()
        partition_fn(
            gm,
            joint.joint_inputs,
            num_fwd_outputs=joint.num_fwd_outputs,
            static_lifetime_input_indices=joint.static_lifetime_input_indices,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_budgeted(budget: float):
    def run(gm, joint_inputs, **kwargs):
        with compat.functorch_config.patch(activation_memory_budget=budget):
            return compat.torch_min_cut_partition(gm, joint_inputs, **kwargs)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 24])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ours = RematPartitioner(resolve_options({"memory_budget": 1.0, "compiler": "eager"}))
    ours_budget = RematPartitioner(resolve_options({"memory_budget": 0.5, "compiler": "eager"}))
    print(f"torch {torch.__version__}; median of {args.repeats}\n")
    print(
        "| GPT layers | joint nodes | torch 1.0 ms | autoremat 1.0 ms | ratio | torch 0.5 ms | "
        "autoremat 0.5 ms | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layers in args.layers:
        cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=layers, n_head=4, d_model=64)
        torch.manual_seed(0)
        (joint,) = capture_joint_graphs(GPT(cfg), *example_batch(cfg, 2, 64))
        t_torch = _time(compat.torch_min_cut_partition, joint, args.repeats)
        t_ours = _time(ours, joint, args.repeats)
        t_torch_budget = _time(_torch_budgeted(0.5), joint, args.repeats)
        t_budget = _time(ours_budget, joint, args.repeats)
        print(
            f"| {layers} | {len(joint.gm.graph.nodes)} | {t_torch * 1e3:.0f} | {t_ours * 1e3:.0f} | "
            f"{t_ours / t_torch:.2f}x | {t_torch_budget * 1e3:.0f} | {t_budget * 1e3:.0f} | "
            f"{t_budget / t_torch_budget:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
