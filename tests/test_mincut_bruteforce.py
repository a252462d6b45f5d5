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


def _plain_network_cut(analysis: JointGraphAnalysis, rules: RecomputeRules) -> set[fx.Node]:
    """The cut of the node-split network as the module docstring states it, every vertex its own
    (``mincut.build_flow_network`` merges those tied to the source or sink by infinite edges)."""
    import networkx as nx

    from autoremat.passes import mincut

    net = mincut.build_flow_network(analysis, rules)  # only for its capacities
    plain = nx.DiGraph()
    for node, facts in analysis.facts.items():
        v_in, v_out = f"{node.name}_in", f"{node.name}_out"
        if node in analysis.tangent_closure:
            plain.add_edge(v_in, "sink")
            continue
        if node in analysis.tangent_free_grads:
            plain.add_edge(v_out, "sink")
        if facts.must_recompute:
            plain.add_edge(v_in, "sink")
        elif node.op == "placeholder" or (analysis.is_forward(node) and not rules.allows(analysis, node)):
            plain.add_edge("source", v_in)
        save_edge = next(data for _, _, data in net.in_edges(v_out, data=True))
        plain.add_edge(v_in, v_out, **save_edge)
        for user in node.users:
            if user.op != "output":
                plain.add_edge(v_out, f"{user.name}_in")
    _, (reachable, _) = nx.minimum_cut(plain, "source", "sink")
    return {
        n
        for n in analysis.facts
        if f"{n.name}_in" in reachable and f"{n.name}_out" in plain and f"{n.name}_out" not in reachable
    }


@given(spec=model_specs(max_steps=3, allow_dropout=True), seed=st.integers(0, 1000), relaxed=st.booleans())
def test_the_merged_flow_network_cuts_where_the_plain_one_does(spec, seed, relaxed):
    """Merging the vertices an infinite edge ties to the source or the sink changes no cut: the
    saved set, tie-breaks included, is the plain node-split network's (solved by networkx's default
    max-flow)."""
    torch.manual_seed(seed)
    joint = capture_joint(RandomModel(spec), torch.randn(spec.batch, spec.seq, spec.dim, requires_grad=True))
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    rules = RecomputeRules(classes=RECOMPUTABLE if relaxed else CHEAP)
    assert set(solve_min_cut(analysis, rules).saved) == _plain_network_cut(analysis, rules)
