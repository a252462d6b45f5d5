"""Functional collectives (``_c10d_functional.*``) through the partitioner: none lost, none merged.

FX treats functional collectives as pure values, so the generic graph clean-ups would happily delete
or merge them: dead-code elimination drops a collective whose result is unused, and common-subexpression
elimination folds two identical ``all_reduce(x)`` calls into one. Every rank would do the same, so the
job would not hang, but the compiled step would no longer issue the collectives the program issues, in
its order. DCE is handled by keeping waits side-effectful (``_torch_compat``); this module
keeps CSE from merging collectives and names the sequence that tests and checks compare.
"""

from __future__ import annotations

import logging

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.graph.op_classes import OpClass, classify

log = logging.getLogger("autoremat")


def is_collective(node: fx.Node) -> bool:
    return node.op == "call_function" and classify(node) is OpClass.COLLECTIVE


def collective_sequence(graph: fx.Graph) -> list[str]:
    """Collective calls of ``graph`` in program order, as ``"<node name>:<op>"``."""
    return [f"{n.name}:{n.target}" for n in graph.nodes if is_collective(n)]


def cse_keeping_collectives(graph: fx.Graph) -> fx.Graph:
    """torch's CSE, unless it would merge collectives; then the graph is left as it is.

    Identical collectives are rare (two redistributions of one tensor), so giving up CSE for such a
    graph costs little; Inductor still deduplicates ordinary ops when it generates code.
    """
    before = sum(1 for n in graph.nodes if is_collective(n))
    result = compat.fx_graph_cse(graph)
    after = sum(1 for n in result.nodes if is_collective(n))
    if after != before:
        log.debug("autoremat: CSE would merge %d collective call(s); graph kept without CSE", before - after)
        return graph
    return result
