"""Where each node of the joint graph runs: the one placement every solver, the memory model and the
rewrite read (docs/architecture.md, "One placement").

- The **tangent closure** (everything computed from incoming gradients, and nodes tagged for the
  backward) runs in the backward.
- **Must run in the forward**: nodes whose second execution would be wrong — mutations, collectives,
  random, effectful and opaque ops, and readers of a graph input that the graph mutates in place (in
  the backward that input holds its new value, so a recomputed reader would read the wrong one) — and
  nodes tagged for the forward. They run once, where eager runs them, even when only the backward reads
  their value (then the forward saves it).
- **Forward nodes** are what the forward needs: the ancestors of the user's outputs and of the nodes
  that must run in the forward, outside the tangent closure.
- A plan's **recomputed nodes** are the forward nodes the backward runs again because it reads them (or
  something computed from them) and they were not saved.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.graph.op_classes import NEVER_RECOMPUTE, OpClass, classify
from autoremat.graph.storage import StorageKey, storage_of


@dataclass(frozen=True)
class Placement:
    tangent_closure: frozenset[fx.Node]
    #: nodes that run in the forward whatever the plan (see the module docstring)
    must_run_in_forward: frozenset[fx.Node]
    forward_nodes: frozenset[fx.Node]
    #: nodes outside the tangent closure that read a graph input the graph mutates in place (they are
    #: part of ``must_run_in_forward``): recomputed in the backward, they would read the new value
    reads_mutated_input: frozenset[fx.Node] = frozenset()


def ancestors(
    roots: Iterable[object], *, stop: Container[fx.Node] = (), within: Container[fx.Node] | None = None
) -> set[fx.Node]:
    """``roots`` (non-nodes ignored) and every node they are computed from. Nodes in ``stop`` are
    included but not looked through; with ``within``, only nodes in it are followed."""
    seen: set[fx.Node] = set()
    stack = [r for r in roots if isinstance(r, fx.Node)]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node not in stop:
            stack.extend(a for a in node.all_input_nodes if within is None or a in within)
    return seen


def _is_mutable(node: fx.Node) -> bool:
    return compat.is_op_overload(node.target) and node.target._schema.is_mutable


def written_args(node: fx.Node) -> list[fx.Node]:
    """The arguments an in-place (or ``out=``) op writes into, from its schema's alias annotations."""
    if not _is_mutable(node):
        return []
    written: list[fx.Node] = []
    for i, arg in enumerate(node.target._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        written.extend(v for v in values if isinstance(v, fx.Node))
    return written


def mutated_inputs(nodes: Iterable[fx.Node], memo: dict[fx.Node, StorageKey] | None = None) -> set[fx.Node]:
    """Graph inputs whose storage some op of the graph writes in place (AOTAutograd's ``copy_`` of a
    mutated input's new value into it at the end of the forward, or a mutation it left in place)."""
    memo = {} if memo is None else memo
    owners = {storage_of(arg, memo)[0] for node in nodes for arg in written_args(node)}
    return {owner for owner in owners if owner.op == "placeholder"}


def readers_of_mutated_inputs(nodes: Sequence[fx.Node], closure: Container[fx.Node]) -> set[fx.Node]:
    """Nodes outside ``closure`` that compute a value of their own from a graph input the graph mutates.

    In the functional joint graph they read the input's value before the mutation; at run time the
    forward has overwritten it before the backward starts, so recomputing them there would read the new
    value (gradient error, issue 14 item 2). Views of the input and in-place ops on it share its storage
    and are not readers: what matters is the first node that copies the old value out.
    """
    memo: dict[fx.Node, StorageKey] = {}
    mutated = mutated_inputs(nodes, memo)
    if not mutated:
        return set()
    readers: set[fx.Node] = set()
    for node in nodes:
        if node.op != "call_function" or node in closure or storage_of(node, memo)[0] in mutated:
            continue
        if any(storage_of(a, memo)[0] in mutated for a in node.all_input_nodes):
            readers.add(node)
    return readers


def must_be_in_backward(node: fx.Node) -> bool:
    """Tagged for the backward by AOTAutograd, or a mutation it placed there."""
    tag = compat.partitioner_tag(node)
    return tag == "must_be_in_backward" or (tag == "is_backward" and _is_mutable(node))


def _must_be_in_forward(node: fx.Node, user_recompute_tagged: bool) -> bool:
    tag = compat.partitioner_tag(node)
    if tag == "must_be_in_forward":
        return True
    if tag in ("is_backward", "must_be_in_backward"):
        return False
    if _is_mutable(node):
        return True
    op_class = classify(node)
    if op_class is OpClass.COLLECTIVE and user_recompute_tagged:
        return False  # the user explicitly asked to recompute this collective
    return op_class in NEVER_RECOMPUTE


def place(
    nodes: Sequence[fx.Node], fwd_outputs: Sequence[fx.Node], recompute_tagged: Container[fx.Node]
) -> Placement:
    """The placement of a joint graph's ``nodes`` (in graph order); ``recompute_tagged`` are the nodes
    the user (or torch's selective checkpointing) asked to recompute."""
    closure: set[fx.Node] = set()
    for node in nodes:
        if compat.is_tangent(node) or must_be_in_backward(node) or compat.is_bwd_seed_offset(node):
            closure.add(node)
        elif node.op != "output" and any(a in closure for a in node.all_input_nodes):
            closure.add(node)
    readers = readers_of_mutated_inputs(nodes, closure)
    forced = readers | {
        n
        for n in nodes
        if n.op == "call_function" and n not in closure and _must_be_in_forward(n, n in recompute_tagged)
    }
    forward = ancestors([*fwd_outputs, *forced]) - closure
    forward.update(n for n in nodes if compat.is_fwd_seed_offset(n))
    return Placement(frozenset(closure), frozenset(forced), frozenset(forward), frozenset(readers))


def backward_computed(backward_reads: Iterable[fx.Node], saved: Iterable[fx.Node]) -> set[fx.Node]:
    """Nodes outside the tangent closure that the backward computes when the forward saves exactly
    ``saved``: the ancestors of what it reads, stopping at saved values and graph inputs."""
    saved = set(saved)
    needed: set[fx.Node] = set()
    stack = [n for n in backward_reads if n not in saved]
    while stack:
        node = stack.pop()
        if node in needed or node in saved or node.op == "placeholder":
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    return needed


def recomputed_nodes(
    backward_reads: Iterable[fx.Node], forward_nodes: Container[fx.Node], saved: Iterable[fx.Node]
) -> set[fx.Node]:
    """Forward nodes the backward runs again: what it computes that the forward computed too."""
    return {n for n in backward_computed(backward_reads, saved) if n in forward_nodes}
