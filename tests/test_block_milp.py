"""Repeated blocks: the restricted programs (tied places, per-block patterns) against brute force over
the same restriction, and the detection of a GPT's layers in its joint graph."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from autoremat.graph.blocks import find_repeated_blocks
from autoremat.passes.block_milp import CHUNKS, FULL_ATTEMPT_NODES, BlockRestriction, solve_by_blocks
from autoremat.passes.budget_problem import UNUSED, BudgetProblem
from autoremat.passes.milp import MIP_REL_GAP, Choice, MilpResult, solve_budget
from tests.test_budget_milp import (
    MAX_N,
    enumerate_plans,
    one_row_per_round,
    peak_tolerance_bytes,
    problems,
    time_tolerance_s,
)


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
@given(restricted_problems(), st.floats(0.0, 1.2), st.booleans())
def test_restricted_time_optimum_matches_brute_force_over_the_restriction(case, cap_fraction, lazy_rows):
    problem, tied, choices = case
    plans = [(t, p, s) for t, p, s in enumerate_plans(problem) if _respects(s, tied, choices)]
    if not plans:  # the restriction leaves no feasible plan: the program must find none either
        assert solve_budget(problem, cap_bytes=2**40, time_limit=10, tied=tied, choices=choices).saved is None
        return
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    fitting = [t for t, p, _ in plans if p <= cap]
    with one_row_per_round():
        result = solve_budget(
            problem, cap_bytes=cap, time_limit=10, tied=tied, choices=choices, lazy_rows=lazy_rows
        )
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
@given(restricted_problems(), st.booleans())
def test_restricted_least_peak_matches_brute_force_over_the_restriction(case, lazy_rows):
    problem, tied, choices = case
    plans = [(t, p, s) for t, p, s in enumerate_plans(problem) if _respects(s, tied, choices)]
    with one_row_per_round():
        result = solve_budget(
            problem, minimise="peak", time_limit=10, tied=tied, choices=choices, lazy_rows=lazy_rows
        )
    if not plans:  # the restriction leaves no feasible plan: the program must find none either
        assert result.saved is None
        return
    assert result.saved is not None
    least = min(p for _, p, _ in plans)
    assert least <= result.peak_bytes <= least * (1 + MIP_REL_GAP) + 1


@settings(deadline=None)
@given(restricted_problems(), st.floats(0.0, 1.2), st.data())
def test_tied_recomputations_find_the_fastest_plan_that_recomputes_alike(case, cap_fraction, data):
    """With recompute decisions tied too (``BlockRestriction.interior``), the answer is a plan of the
    restriction that fits the cap, and no plan that recomputes alike within each group (what the tie
    is exact for) is faster beyond the gap: the program may also recompute more than a plan needs,
    so it finds at least those."""
    problem, tied, choices = case
    order = data.draw(st.permutations(range(problem.n)))
    groups = [tuple(order[i : i + 2]) for i in range(0, len(order) - 1, 2)]
    plans = [(t, p, s) for t, p, s in enumerate_plans(problem) if _respects(s, tied, choices)]
    assume(plans)
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))

    def alike(saved: set[int]) -> bool:
        flags = problem.recomputed_by(saved)
        return all(len({flags[v] for v in group}) == 1 for group in groups)

    fitting_alike = [t for t, p, s in plans if p <= cap and alike(s)]
    result = solve_budget(
        problem, cap_bytes=cap, time_limit=10, tied=tied, choices=choices, tied_recompute=groups
    )
    if result.saved is None:
        assert not fitting_alike
        return
    evaluated = {frozenset(saved): (t, p) for t, p, saved in plans}
    assert result.saved in evaluated, "the answer is not a feasible plan of the restriction"
    time_s, peak = evaluated[result.saved]
    assert peak <= cap
    if fitting_alike:
        assert time_s <= min(fitting_alike) * (1 + MIP_REL_GAP) + time_tolerance_s(problem)


def test_interior_groups_leave_out_the_first_and_last_blocks():
    restriction = BlockRestriction(((0, 1), (2, 3), (4, 5), (6, 7)))
    assert restriction.interior == [(2, 4), (3, 5)]
    assert BlockRestriction(((0, 1), (2, 3), (4, 5))).interior == []


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
@given(problems(), st.floats(0.0, 1.2), st.sampled_from(["time", "uncapped", "peak"]), st.booleans())
def test_the_bounds_that_certify_restricted_answers_are_lower_bounds(
    problem, cap_fraction, minimise, relaxation
):
    """A restricted answer is called optimal only when it is within 1% of a bound on the whole
    program (``block_milp._certified``): HiGHS' dual bound after a short branch-and-bound, or the
    linear relaxation's optimum, each less the tie-breaking term. Neither may exceed the true
    optimum (brute force), even after a single node."""
    plans = list(enumerate_plans(problem))
    assume(plans)
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    if minimise in ("time", "uncapped"):
        cap = cap if minimise == "time" else None
        fitting = [t for t, p, _ in plans if cap is None or p <= cap]
        assume(fitting)
        result = solve_budget(problem, cap_bytes=cap, node_limit=1, time_limit=10, relaxation=relaxation)
        optimum, tolerance = min(fitting), time_tolerance_s(problem)
    else:
        result = solve_budget(problem, minimise="peak", node_limit=1, time_limit=10, relaxation=relaxation)
        optimum, tolerance = peaks[0], peak_tolerance_bytes(problem)
    if relaxation:
        assert result.saved is None, "a relaxation's fractional point is not a plan"
    assume(result.bound is not None)
    assert result.bound <= optimum + tolerance


@st.composite
def repeated_problems(draw) -> tuple[BudgetProblem, BlockRestriction]:
    """``copies`` of one random block of ``k`` candidates, one after another in the forward and in
    reverse in the backward, where the gradients accumulated so far raise each block's base; each
    block's first candidate may read the previous block's last. The restriction is known by
    construction: candidate ``b * k + j`` is place ``j`` of block ``b``."""
    copies = draw(st.integers(2, 4))
    k = draw(st.integers(1, min(3, MAX_N // copies)))  # brute force stays within 2^MAX_N plans
    fp, bp = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    size = st.integers(0, 1000)

    def per_candidate(strategy):
        return draw(st.lists(strategy, min_size=k, max_size=k))

    local_inputs = [sorted(draw(st.sets(st.integers(0, j - 1), max_size=2))) if j else [] for j in range(k)]
    chained = draw(st.booleans())
    needed = draw(st.sets(st.integers(0, k - 1), min_size=1))
    can_save, can_recompute = per_candidate(st.booleans()), per_candidate(st.booleans())
    cost, recompute_bytes, group_bytes = (
        per_candidate(st.floats(0, 1e-3)),
        per_candidate(size),
        per_candidate(size),
    )
    fwd_release, save_last = per_candidate(st.integers(0, fp - 1)), per_candidate(st.integers(UNUSED, bp - 1))
    spans = [
        sorted(draw(st.lists(st.integers(0, bp - 1), min_size=2, max_size=2)))
        if draw(st.booleans())
        else None
        for _ in range(k)
    ]
    fwd_base, bwd_base = (
        draw(st.lists(size, min_size=fp, max_size=fp)),
        draw(st.lists(size, min_size=bp, max_size=bp)),
    )
    grads = draw(st.integers(0, 300))

    def bwd_at(b: int, t: int) -> int:  # block b's backward runs (copies - 1 - b)-th
        return t if t == UNUSED else (copies - 1 - b) * bp + t

    blocks = range(copies)
    problem = BudgetProblem(
        inputs=tuple(
            tuple([*(b * k + u for u in local_inputs[j]), *([b * k - 1] if chained and b and j == 0 else [])])
            for b in blocks
            for j in range(k)
        ),
        needed=tuple(b * k + j for b in blocks for j in sorted(needed)),
        can_save=tuple(can_save) * copies,
        can_recompute=tuple(can_recompute) * copies,
        cost_s=tuple(cost) * copies,
        recompute_bytes=tuple(recompute_bytes) * copies,
        first=tuple(UNUSED if spans[j] is None else bwd_at(b, spans[j][0]) for b in blocks for j in range(k)),
        last=tuple(UNUSED if spans[j] is None else bwd_at(b, spans[j][1]) for b in blocks for j in range(k)),
        group=tuple(range(copies * k)),
        group_bytes=tuple(group_bytes) * copies,
        save_last=tuple(bwd_at(b, save_last[j]) for b in blocks for j in range(k)),
        fwd_release=tuple(b * fp + fwd_release[j] for b in blocks for j in range(k)),
        bwd_base=tuple(bwd_base[t] + order * grads for order in range(copies) for t in range(bp)),
        fwd_base=(*(fwd_base[t] for _ in blocks for t in range(fp)), draw(size)),
        save_extra_end=(0,) * (copies * k),
    )
    return problem, BlockRestriction(tuple(tuple(b * k + j for j in range(k)) for b in blocks))


def _solve(problem: BudgetProblem, node_limit: int, **kwargs) -> MilpResult:
    return solve_budget(problem, time_limit=10, node_limit=node_limit, **kwargs)


@settings(deadline=None)
@given(
    repeated_problems(),
    st.floats(0.0, 1.2),
    st.floats(0.5, 1.0),
    st.sampled_from([None, FULL_ATTEMPT_NODES]),
    st.sampled_from([1, CHUNKS]),
)
def test_block_reduced_answers_are_within_their_proven_gap_of_the_full_optimum(
    case, cap_fraction, lower, attempt, chunks
):
    """On graphs built from repeated blocks, every answer of the block-reduced solve
    (``solve_by_blocks``) fits the cap, and its gap is proven: it is at most that far above the
    full problem's optimum (brute force), restricted or not, and also for a second, lower cap that
    reuses the first cap's bound. With the whole program's short try (as in a compile) the best
    answer is the full optimum within 1%; without it, the restricted programs alone must still be
    honest about their gap."""
    problem, restriction = case
    plans = list(enumerate_plans(problem))
    if not plans:  # no plan at all: nor may the block-reduced solve find one
        assert (
            solve_by_blocks(problem, restriction, _solve, full_attempt_nodes=attempt, cap_bytes=2**40) == []
        )
        return
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    carried: list[float | None] = []
    tolerance = time_tolerance_s(problem)
    for each in (cap, int(cap * lower)):
        answers = solve_by_blocks(
            problem,
            restriction,
            _solve,
            carried=carried,
            full_attempt_nodes=attempt,
            chunks=chunks,
            cap_bytes=each,
        )
        fitting = [t for t, p, _ in plans if p <= each]
        if not fitting:
            assert answers == []
            continue
        optimum = min(fitting)
        for answer in answers:
            event(f"{answer.restricted or 'whole'} gap {'none' if answer.gap is None else answer.gap > 0}")
            assert problem.peak_bytes(answer.saved)[0] <= each
            assert answer.time_s >= optimum - tolerance
            if answer.gap is not None:
                proven = answer.time_s * (1 - answer.gap) if answer.restricted else optimum
                assert proven <= optimum + tolerance, "the claimed gap is not a proof"
                if answer.gap <= MIP_REL_GAP:  # what the search calls optimal
                    assert answer.time_s <= optimum * (1 + MIP_REL_GAP) / (1 - MIP_REL_GAP) + tolerance
        if attempt is not None and each == cap:
            assert answers and answers[0].time_s <= optimum * (1 + MIP_REL_GAP) + tolerance


def _two_blocks_of_one_value() -> tuple[BudgetProblem, BlockRestriction]:
    """Two one-value blocks, for tests whose stub solver decides every answer."""
    problem = BudgetProblem(
        inputs=((), ()), needed=(0, 1), can_save=(True, True), can_recompute=(True, True),
        cost_s=(1.0, 1.0), recompute_bytes=(0, 0), first=(UNUSED, UNUSED), last=(UNUSED, UNUSED),
        group=(0, 1), group_bytes=(1, 1), save_last=(0, 0), fwd_release=(0, 0), bwd_base=(0,),
        fwd_base=(0, 0),
    )  # fmt: skip
    return problem, BlockRestriction(((0,), (1,)))


@pytest.mark.parametrize("relaxed_bound, whole_tried", [(0.95, True), (0.995, False)])
def test_a_lower_caps_answer_left_unproven_gets_the_whole_programs_nodes(relaxed_bound, whole_tried):
    """At a later cap of the same target the patterns' answer (time 1.0) is proven against the
    carried bound and the relaxation's; when they leave it more than 1% away, the whole program
    runs ``LATER_ATTEMPT_NODES`` nodes and its bound certifies the answer, else it does not run."""
    from autoremat.passes.block_milp import LATER_ATTEMPT_NODES

    problem, restriction = _two_blocks_of_one_value()
    calls = []

    def solve(problem, node_limit, **kwargs):
        calls.append((node_limit, sorted(k for k in kwargs if k in ("choices", "relaxation", "tied"))))
        result = MilpResult("optimal", frozenset({0}), 1.0, 1, 0.0, 0.0, 0, 0, restricted="mixed")
        if kwargs.get("relaxation"):
            return MilpResult("optimal", None, None, None, None, 0.0, 0, 0, bound=relaxed_bound)
        if "choices" in kwargs:
            return result
        return MilpResult("limit-reached", frozenset({1}), 1.002, 1, 0.005, 0.0, 0, 0, bound=0.997)

    carried = [0.9]
    answers = solve_by_blocks(problem, restriction, solve, carried=carried, cap_bytes=1)
    whole_calls = [c for c in calls if c[1] == []]
    assert (whole_calls == [(LATER_ATTEMPT_NODES, [])]) == whole_tried
    mixed = next(a for a in answers if a.restricted == "mixed")
    expected_bound = 0.997 if whole_tried else relaxed_bound
    assert mixed.gap == pytest.approx(1.0 - expected_bound)
    assert carried == [pytest.approx(expected_bound)], "the best bound is carried to the next cap"


@pytest.mark.parametrize("sub_mip_limit", [1, 2])
@pytest.mark.parametrize("whole_gap, runs_tried", [(0.015, False), (0.05, True), (None, True)])
def test_the_runs_of_tied_blocks_are_solved_only_after_a_poor_whole_program_answer(
    monkeypatch, whole_gap, runs_tried, sub_mip_limit
):
    """The whole program's short try runs without HiGHS' root sub-MIPs above
    ``SUB_MIP_MAX_CANDIDATES``; the runs of tied blocks follow only when its answer is further than
    ``CLOSE_ANSWER_GAP`` above its bound (or it has none), and the mixed solve starts from the whole
    program's patterns either way."""
    from autoremat.passes import block_milp
    from autoremat.passes.block_milp import CLOSE_ANSWER_GAP

    monkeypatch.setattr(block_milp, "SUB_MIP_MAX_CANDIDATES", sub_mip_limit)

    assert MIP_REL_GAP < 0.015 <= CLOSE_ANSWER_GAP < 0.05
    problem, restriction = _two_blocks_of_one_value()
    calls = []

    def solve(problem, node_limit, **kwargs):
        kind = next((k for k in ("choices", "relaxation", "tied") if k in kwargs), "whole")
        calls.append((kind, kwargs.get("root_heuristics", "default")))
        if kind == "relaxation":
            return MilpResult("optimal", None, None, None, None, 0.0, 0, 0, bound=0.9)
        if kind == "whole":
            saved = None if whole_gap is None else frozenset({1})
            return MilpResult("limit-reached", saved, 1.0, 1, whole_gap, 0.0, 0, 0, bound=0.95)
        return MilpResult("optimal", frozenset({0}), 0.97, 1, 0.0, 0.0, 0, 0, restricted=kind)

    answers = solve_by_blocks(problem, restriction, solve, cap_bytes=1)
    kinds = [kind for kind, _ in calls]
    assert kinds == ["whole", *(["tied"] if runs_tried else []), "choices", "relaxation"]
    # only the whole program's tries say; the restricted solves keep HiGHS' defaults
    assert dict(calls)["whole"] is (problem.n <= sub_mip_limit) and dict(calls)["choices"] == "default"
    assert answers[0].restricted in ("choices", "tied") and answers[0].gap == pytest.approx(1 - 0.95 / 0.97)
