"""torch's own budget partitioner as an explorer: the plans ``activation_memory_budget`` makes, in the
pool next to ours.

Our promise is to beat torch's knob, so its plans are the least we must consider. They are also good
seeds: the knob saves matmul outputs and recomputes the pointwise work around them, plans that fuse
well under Inductor and that the linearised MILP and the greedy ranking can miss (on the suite's gpt2
its 0.1 plan peaks 4% below our least plan, by our own model and under Inductor). Each knob value
costs one run of torch's partitioner on a copy of the joint graph; its saved set is mapped back to
our nodes by name and completed like any plan, so a plan that breaks our placement rules is dropped.
"""

from __future__ import annotations

import copy
import logging

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.passes.pool import complete_saved
from autoremat.passes.solver import JointGraph, SearchContext

log = logging.getLogger("autoremat")

#: the knob values whose plans join the pool: where its lowest peaks were on the suite (quick and
#: act); its 1.0 plan is the min-cut one (ours already), and its 0.0 plan peaked highest of all
KNOB_VALUES = (0.25, 0.1)
#: joint graphs above this size are not handed to torch's partitioner: each knob value costs a run of
#: it (2.7 s on a 12-layer GPT's 2,124 nodes, 7 s on 4,980, on 2 cores: together more than the whole
#: rest of our search there), and there the block-restricted MILP's and greedy's plans beat the
#: knob's (12-layer GPT, budgets 0.1-0.75: the knob's plans were dominated in every pool). The suite's
#: models (up to ~1,200 nodes: act gpt2 and llama) keep them.
MAX_NODES = 1500


class TorchKnobSolver:
    name = "torch-knob"

    def explore(self, ctx: SearchContext) -> None:
        if ctx.joint is None:
            return
        if len(ctx.analysis.order) > MAX_NODES:
            ctx.stats["torch_knob"] = f"skipped: over {MAX_NODES} nodes"
            return
        for value in KNOB_VALUES:
            if ctx.deadline.left() <= 0:
                return
            try:
                saved = knob_saved_names(ctx.joint, ctx.analysis.num_fwd_outputs, value)
                by_name = {n.name: n for n in ctx.analysis.order}
                cut = complete_saved(ctx.analysis, (by_name[name] for name in saved))
            except Exception as exc:  # noqa: BLE001 - a plan we cannot map is a plan we do not consider
                log.debug(
                    "autoremat: torch's knob at %g gave no plan (%s: %s)", value, type(exc).__name__, exc
                )
                continue
            ctx.pool.add(cut, self.name)

    def propose(self, ctx: SearchContext, cap_bytes: int) -> None:
        return None


def knob_saved_names(joint: JointGraph, num_fwd_outputs: int, value: float) -> list[str]:
    """Names of the values torch's partitioner saves at ``activation_memory_budget=value``."""
    graph = copy.deepcopy(joint.module)
    with compat.functorch_config.patch(activation_memory_budget=value):
        fw, _ = compat.torch_min_cut_partition_without_cse(
            graph,
            joint.inputs,
            num_fwd_outputs=num_fwd_outputs,
            static_lifetime_input_indices=joint.static_indices,
        )
    (output,) = fw.graph.find_nodes(op="output")
    return [a.name for a in output.args[0][num_fwd_outputs:] if isinstance(a, fx.Node)]
