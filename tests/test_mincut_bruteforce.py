"""Solver specification: the min-cut's saved set is feasible and as small as any feasible set.

Feasibility is decided from first principles, without autoremat's placement or recompute rules: the
backward is what the tangents flow into; it reads the values it takes from outside itself and the
gradients it returns. A saved set is feasible when each value the backward reads is saved, a graph
input, or can be computed again in the backward from such values, where computing again never runs
an op whose second run would be wrong (random, collective, effectful, mutating, opaque) and, for a
value the forward computes anyway, only runs ops of the classes the rules under test allow.
"""

from __future__ import annotations

import itertools

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from hypothesis import assume, given
from hypothesis import strategies as st

from autoremat.graph.analysis import JointGraphAnalysis, analyse
from autoremat.graph.op_classes import CHEAP, NEVER_RECOMPUTE, RECOMPUTABLE, OpClass, classify
from autoremat.passes.cut import RecomputeRules
from autoremat.passes.mincut import solve_min_cut
from tests.harness import capture_joint
from tests.random_models import RandomModel, model_specs

MAX_CANDIDATES = 15  # 2^15 subsets: exhaustive but fast


def _ancestors(nodes) -> set[fx.Node]:
    seen, stack = set(), [n for n in nodes if isinstance(n, fx.Node)]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


class FirstPrinciples:
    """Which values the backward reads and which nodes it may run, read off the graph directly."""

    def __init__(self, graph: fx.Graph, num_fwd_outputs: int, allowed: frozenset[OpClass]) -> None:
        nodes = list(graph.nodes)
        outputs = pytree.arg_tree_leaves(*nodes[-1].args)
        self.backward: set[fx.Node] = set()
        for n in nodes:
            from_tangent = n.op == "placeholder" and n.name.startswith("tangents")
            if from_tangent or (
                n.op == "call_function" and any(a in self.backward for a in n.all_input_nodes)
            ):
                self.backward.add(n)
        self.reads = {a for n in self.backward for a in n.all_input_nodes if a not in self.backward}
        self.reads |= {o for o in outputs[num_fwd_outputs:] if isinstance(o, fx.Node)} - self.backward
        #: ops that must run exactly once, where eager runs them: in the forward
        self.run_once = {
            n
            for n in nodes
            if n.op == "call_function" and n not in self.backward and classify(n) in NEVER_RECOMPUTE
        }
        #: what the forward computes anyway: the user's outputs, the run-once ops, and their inputs
        self.forward = _ancestors([*outputs[:num_fwd_outputs], *self.run_once]) - self.backward
        self.allowed = allowed

    def may_run_in_backward(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node in self.run_once:
            return False
        return node not in self.forward or classify(node) in self.allowed

    def feasible(self, saved: set[fx.Node]) -> bool:
        memo: dict[fx.Node, bool] = {}

        def available(node: fx.Node) -> bool:
            if node not in memo:
                if node in saved or node.op == "placeholder":
                    memo[node] = True
                else:
                    memo[node] = self.may_run_in_backward(node) and all(
                        available(a) for a in node.all_input_nodes
                    )
            return memo[node]

        return all(available(n) for n in self.reads)


def brute_force_min_bytes(analysis: JointGraphAnalysis, oracle: FirstPrinciples) -> int:
    """Fewest bytes of any feasible saved set (bytes and saveability per node from the analysis)."""
    useful = _ancestors(oracle.reads) - oracle.backward
    saveable = [n for n in useful if analysis.facts[n].unsaveable is None]
    # Saving a zero-byte value (a parameter, a view of one) never hurts, so always include those.
    free = {n for n in saveable if analysis.facts[n].save_bytes == 0}
    order = {n: i for i, n in enumerate(analysis.graph.nodes)}
    candidates = sorted(set(saveable) - free, key=order.__getitem__)
    assume(len(candidates) <= MAX_CANDIDATES)
    best = None
    for r in range(len(candidates) + 1):
        for subset in itertools.combinations(candidates, r):
            cost = sum(analysis.facts[n].save_bytes for n in subset)
            if (best is None or cost < best) and oracle.feasible(free | set(subset)):
                best = cost
    assert best is not None, "no feasible saved set at all"
    return best


@given(spec=model_specs(max_steps=3, allow_dropout=True), seed=st.integers(0, 1000), relaxed=st.booleans())
def test_min_cut_is_feasible_and_saves_the_fewest_bytes_of_any_feasible_set(spec, seed, relaxed):
    torch.manual_seed(seed)
    model = RandomModel(spec)
    x = torch.randn(spec.batch, spec.seq, spec.dim, requires_grad=True)
    joint = capture_joint(model, x)
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    classes = RECOMPUTABLE if relaxed else CHEAP
    oracle = FirstPrinciples(joint.gm.graph, joint.num_fwd_outputs, classes)
    cut = solve_min_cut(analysis, RecomputeRules(classes=classes))
    assert oracle.feasible(set(cut.saved))
    assert cut.cut_bytes == brute_force_min_bytes(analysis, oracle)
