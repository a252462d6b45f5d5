"""Mechanism, not policy: split a joint graph into forward and backward given a chosen saved set.

The saved set is decided elsewhere (solvers); this module only honours AOTAutograd's contract: forward
outputs are the user outputs, then saved tensors, then saved SymInts; backward placeholders follow. The
extraction itself reuses torch's helper (through ``_torch_compat``), which also places mutations and
RNG seed inputs where AOTAutograd's runtime expects them.
"""

from __future__ import annotations

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.graph.analysis import JointGraphAnalysis


def split_joint_graph(
    joint_module: fx.GraphModule, analysis: JointGraphAnalysis, saved: tuple[fx.Node, ...]
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Forward and backward modules whose interface is exactly ``saved``."""
    sym_nodes = [n for n in saved if compat.is_sym_node(n)]
    opaque = [n for n in saved if compat.is_opaque_node(n)]
    tensors = [n for n in saved if n not in sym_nodes and n not in opaque]
    fw, bw = compat.extract_fwd_bwd_modules(
        joint_module,
        tensors,
        sym_nodes,
        opaque,
        num_fwd_outputs=analysis.num_fwd_outputs,
        static_lifetime_input_nodes=analysis.static_inputs,
    )
    return compat.polish_partitioned_modules(fw, bw)
