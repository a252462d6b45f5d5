"""Repeated blocks: the restricted programs (tied places, per-block patterns) against brute force over
the same restriction, and the detection of a GPT's layers in its joint graph."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autoremat.graph.blocks import find_repeated_blocks
from autoremat.passes.block_milp import BlockRestriction
from autoremat.passes.milp import MIP_REL_GAP, Choice, solve_budget
from tests.test_budget_milp import enumerate_plans, peak_tolerance_bytes, problems, time_tolerance_s


@st.composite
def restricted_problems(draw):
    """A problem, disjoint tied groups and disjoint per-block choices over its candidates."""
    problem = draw(problems())
    order = draw(st.permutations(range(problem.n)))
    cut = draw(st.integers(0, problem.n))
    tied_part, choice_part = order[:cut], order[cut:]
    tied, i = [], 0
    while i < len(tied_part):
        size = draw(st.integers(1, 3))
        tied.append(tuple(tied_part[i : i + size]))
        i += size
    choices, i = [], 0
    while i < len(choice_part):
        size = draw(st.integers(1, 3))
        members = tuple(choice_part[i : i + size])
        subsets = st.frozensets(st.integers(0, len(members) - 1))
        choices.append(Choice(members, tuple(draw(st.lists(subsets, min_size=1, max_size=3)))))
        i += size
    return problem, tied, choices


def _respects(saved: set[int], tied, choices) -> bool:
    if any(len({v in saved for v in group}) > 1 for group in tied):
        return False
    for choice in choices:
        pattern = frozenset(j for j, v in enumerate(choice.members) if v in saved)
        if pattern not in choice.patterns:
            return False
    return True


@settings(deadline=None)
@given(restricted_problems(), st.floats(0.0, 1.2))
def test_restricted_time_optimum_matches_brute_force_over_the_restriction(case, cap_fraction):
    problem, tied, choices = case
    plans = [(t, p, s) for t, p, s in enumerate_plans(problem) if _respects(s, tied, choices)]
    if not plans:  # the restriction leaves no feasible plan: the program must find none either
        assert solve_budget(problem, cap_bytes=2**40, time_limit=10, tied=tied, choices=choices).saved is None
        return
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    fitting = [t for t, p, _ in plans if p <= cap]
    result = solve_budget(problem, cap_bytes=cap, time_limit=10, tied=tied, choices=choices)
    if not fitting:
        assert result.saved is None
        return
    assert result.saved is not None and result.status == "optimal"
    assert _respects(set(result.saved), tied, choices), "the answer breaks the restriction"
    evaluated = {frozenset(saved): (t, p) for t, p, saved in plans}
    assert result.saved in evaluated
    time_s, peak = evaluated[result.saved]
    assert peak <= cap
    assert time_s <= min(fitting) * (1 + MIP_REL_GAP) + time_tolerance_s(problem)
    assert result.restricted == ("mixed" if choices else "tied" if tied else None)


@settings(deadline=None)
@given(restricted_problems())
def test_restricted_least_peak_matches_brute_force_over_the_restriction(case):
    problem, tied, choices = case
    plans = [(t, p, s) for t, p, s in enumerate_plans(problem) if _respects(s, tied, choices)]
    result = solve_budget(problem, minimise="peak", time_limit=10, tied=tied, choices=choices)
    if not plans:  # the restriction leaves no feasible plan: the program must find none either
        assert result.saved is None
        return
    assert result.saved is not None
    least = min(p for _, p, _ in plans)
    assert least <= result.peak_bytes <= least * (1 + MIP_REL_GAP) + 1


def test_patterns_keep_the_first_plans_and_then_the_commonest():
    restriction = BlockRestriction(((0, 1), (2, 3), (4, 5)))
    assert restriction.tied == [(0, 2, 4), (1, 3, 5)]
    patterns = restriction.patterns([{0, 2, 4}, {0, 3}], first=[{1, 3, 5}])
    # the first plan's pattern first, then by count: {0} (4 blocks), then {} and {1} (one each)
    assert patterns[0] == frozenset({1})
    assert patterns[1] == frozenset({0})
    assert patterns == [frozenset({1}), frozenset({0}), frozenset()]
    (choice, *_) = restriction.choices(patterns)
    assert choice.members == (0, 1) and choice.patterns == tuple(patterns)


def _gpt_analysis(layers: int):
    from autoremat.demo.model import GPT, GPTConfig, example_batch
    from autoremat.graph.analysis import analyse
    from autoremat.measure import capture_joint_graphs

    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=layers, n_head=2, d_model=16)
    torch.manual_seed(0)
    (joint,) = capture_joint_graphs(GPT(cfg), *example_batch(cfg, 2, 16))
    gm = joint.fresh_copy()
    gm.graph.eliminate_dead_code()
    return analyse(
        gm.graph,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )


@pytest.mark.parametrize("layers", [3, 5])
def test_a_gpts_layers_are_found_as_isomorphic_copies(layers):
    analysis = _gpt_analysis(layers)
    blocks = find_repeated_blocks(analysis)
    assert blocks is not None and blocks.copies == layers
    nodes_per_layer = len(analysis.graph.nodes) / layers
    assert len(blocks.slots) >= 0.5 * nodes_per_layer, "most of each layer should be in slots"
    for slot in blocks.slots:
        assert len({n.target for n in slot}) == 1
        # forward slots run in block order, backward slots in reverse
        orders = [analysis.order[n] for n in slot]
        assert orders == sorted(orders) or orders == sorted(orders, reverse=True)
    placed = blocks.block_of()
    assert len(placed) == len(blocks.slots) * layers


def test_a_graph_without_repetition_has_no_blocks():
    from autoremat.graph.analysis import analyse
    from tests.harness import capture_joint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    joint = capture_joint(model, torch.randn(4, 8, requires_grad=True))
    gm = joint.fresh_copy()
    analysis = analyse(gm.graph, num_fwd_outputs=joint.num_fwd_outputs, static_lifetime_input_indices=[])
    assert find_repeated_blocks(analysis) is None


def test_restricted_search_plans_a_gpt_that_trains_like_eager_and_does_not_depend_on_the_clock(
    monkeypatch,
):
    """Forced onto the block-restricted programs (the threshold lowered to a 3-layer GPT), the
    search still gives a plan within the budget whose step matches eager, and the same plan under
    two different time limits (nothing stops on the clock)."""
    import autoremat
    from autoremat.demo.model import GPT, GPTConfig, example_batch
    from autoremat.passes import milp_solver
    from tests.harness import assert_steps_match, compiled_step, train_step

    monkeypatch.setattr(milp_solver, "FULL_PROGRAM_MAX_CANDIDATES", 0)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, d_model=16)
    torch.manual_seed(0)
    model = GPT(cfg)
    batch = example_batch(cfg, 2, 16)
    expected = train_step(model, model, batch)
    saved_sets = []
    for limit in (60.0, 30.0):
        backend = autoremat.backend(memory_budget=0.3, compiler="eager", solver_time_limit=limit)
        assert_steps_match(compiled_step(model, backend, batch), expected)
        plan = autoremat.recent_plans()[-1]
        assert plan.solver_stats.get("blocks") == 3
        assert plan.solver_stats.get("milp_restricted") == "mixed"
        assert plan.predicted_peak_bytes <= plan.target_bytes
        saved_sets.append(plan.digest())
    assert saved_sets[0] == saved_sets[1]


@settings(deadline=None)
@given(problems(), st.floats(0.0, 1.2), st.sampled_from(["time", "uncapped", "peak"]))
def test_the_bound_that_certifies_restricted_answers_is_a_lower_bound(problem, cap_fraction, minimise):
    """A restricted answer is called optimal only when it is within 1% of the whole program's bound
    from a short branch-and-bound (``milp_solver._certified``): that bound, HiGHS' dual bound less the
    tie-breaking term, must never exceed the true optimum (brute force), even after a single node."""
    plans = list(enumerate_plans(problem))
    assume(plans)
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    if minimise in ("time", "uncapped"):
        cap = cap if minimise == "time" else None
        fitting = [t for t, p, _ in plans if cap is None or p <= cap]
        assume(fitting)
        result = solve_budget(problem, cap_bytes=cap, node_limit=1, time_limit=10)
        optimum, tolerance = min(fitting), time_tolerance_s(problem)
    else:
        result = solve_budget(problem, minimise="peak", node_limit=1, time_limit=10)
        optimum, tolerance = peaks[0], peak_tolerance_bytes(problem)
    assume(result.bound is not None)
    assert result.bound <= optimum + tolerance
