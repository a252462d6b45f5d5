"""Solver specification: the min-cut's saved set is feasible and as small as any feasible set.

Feasibility is checked independently of the flow network: a value the backward reads is available if
it was saved, or if it may be recomputed and all its inputs are available.
"""

from __future__ import annotations

import itertools

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from autoremat.graph.analysis import JointGraphAnalysis, analyse
from autoremat.graph.op_classes import CHEAP, RECOMPUTABLE
from autoremat.passes.cut import RecomputeRules
from autoremat.passes.mincut import solve_min_cut
from tests.harness import capture_joint
from tests.random_models import RandomModel, model_specs

MAX_CANDIDATES = 15  # 2^15 subsets: exhaustive but fast


def _available(analysis: JointGraphAnalysis, rules: RecomputeRules, saved: set, node, memo: dict) -> bool:
    if node in memo:
        return memo[node]
    if node in saved:
        result = True
    elif node.op == "placeholder" or (analysis.is_forward(node) and not rules.allows(analysis, node)):
        result = False
    else:
        result = all(_available(analysis, rules, saved, a, memo) for a in node.all_input_nodes)
    memo[node] = result
    return result


def feasible(analysis: JointGraphAnalysis, rules: RecomputeRules, saved: set) -> bool:
    memo: dict = {}
    return all(_available(analysis, rules, saved, n, memo) for n in analysis.backward_reads)


def _ancestors(nodes):
    seen, stack = set(), list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def brute_force_min_bytes(analysis: JointGraphAnalysis, rules: RecomputeRules) -> int:
    useful = _ancestors(analysis.backward_reads) - analysis.tangent_closure
    saveable = [n for n in useful if analysis.facts[n].unsaveable is None]
    # Saving a zero-byte value (a parameter, a view of one) never hurts, so always include those.
    free = {n for n in saveable if analysis.facts[n].save_bytes == 0}
    candidates = sorted(set(saveable) - free, key=analysis.order.__getitem__)
    assume(len(candidates) <= MAX_CANDIDATES)
    best = None
    for r in range(len(candidates) + 1):
        for subset in itertools.combinations(candidates, r):
            cost = sum(analysis.facts[n].save_bytes for n in subset)
            if (best is None or cost < best) and feasible(analysis, rules, free | set(subset)):
                best = cost
    assert best is not None, "no feasible saved set at all"
    return best


@given(spec=model_specs(max_steps=3, allow_dropout=True), seed=st.integers(0, 1000), relaxed=st.booleans())
def test_min_cut_matches_brute_force(spec, seed, relaxed):
    torch.manual_seed(seed)
    model = RandomModel(spec)
    x = torch.randn(spec.batch, spec.seq, spec.dim, requires_grad=True)
    joint = capture_joint(model, x)
    analysis = analyse(
        joint.gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    rules = RecomputeRules(classes=RECOMPUTABLE if relaxed else CHEAP)
    cut = solve_min_cut(analysis, rules)
    assert feasible(analysis, rules, set(cut.saved))
    assert cut.cut_bytes == brute_force_min_bytes(analysis, rules)
