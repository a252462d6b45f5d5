"""Solver specification: the MILP's optimum equals exhaustive enumeration under the same model.

Problems are generated directly as ``BudgetProblem`` data (random DAGs, byte sizes, costs, liveness
intervals, storage groups), so every corner of the model is exercised, not only what real graphs
happen to contain; a second test builds problems from real joint graphs.
"""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from autoremat.passes import milp
from autoremat.passes.budget_problem import UNUSED, BudgetProblem
from autoremat.passes.milp import MIP_REL_GAP, solve_budget
from autoremat.passes.problem_builder import build_problem

MAX_N = 9  # 2^9 saved sets per problem: exhaustive and fast


def time_tolerance_s(problem: BudgetProblem) -> float:
    """Seconds below which HiGHS cannot tell two plans apart: its tolerances are about 1e-6 of the
    objective scale, which ``milp.py`` sets to the total recompute time (at least 1 µs)."""
    return 1e-6 * max(sum(problem.cost_s), 1e-6)


def peak_tolerance_bytes(problem: BudgetProblem) -> float:
    """Bytes below which the program's memory rows cannot be trusted: HiGHS' feasibility tolerance
    (1e-7) in the program's memory unit, the largest base or group size (``milp.py``)."""
    return 1e-6 * max([1, *problem.bwd_base, *problem.fwd_base, *problem.group_bytes])


@st.composite
def problems(draw) -> BudgetProblem:
    n = draw(st.integers(1, MAX_N))
    inputs = tuple(
        tuple(sorted(draw(st.sets(st.integers(0, v - 1), max_size=2)))) if v else () for v in range(n)
    )
    positions = draw(st.integers(1, 5))
    needed = tuple(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1))))
    firsts, lasts = [], []
    for _ in range(n):
        if draw(st.booleans()):
            a, b = sorted(draw(st.lists(st.integers(0, positions - 1), min_size=2, max_size=2)))
        else:
            a = b = UNUSED
        firsts.append(a)
        lasts.append(b)
    groups = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    n_groups = max(groups) + 1
    forward_positions = draw(st.integers(1, 4))
    size = st.integers(0, 1000)
    position = st.integers(0, positions - 1)
    # recompute bursts: steps of candidates live together before a position, groups released there
    bursts = draw(st.lists(st.tuples(position, st.sets(st.integers(0, n - 1), max_size=3)), max_size=4))
    released = draw(st.dictionaries(position, st.sets(st.integers(0, n_groups - 1), max_size=2), max_size=2))
    burst_base = draw(st.lists(size, min_size=positions, max_size=positions) | st.just([]))
    return BudgetProblem(
        inputs=inputs,
        needed=needed,
        can_save=tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        can_recompute=tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        cost_s=tuple(draw(st.lists(st.floats(0, 1e-3), min_size=n, max_size=n))),
        recompute_bytes=tuple(draw(st.lists(size, min_size=n, max_size=n))),
        first=tuple(firsts),
        last=tuple(lasts),
        group=tuple(groups),
        group_bytes=tuple(draw(st.lists(size, min_size=n_groups, max_size=n_groups))),
        save_last=tuple(
            draw(st.lists(st.integers(UNUSED, positions - 1), min_size=n_groups, max_size=n_groups))
        ),
        fwd_release=tuple(
            draw(st.lists(st.integers(0, forward_positions - 1), min_size=n_groups, max_size=n_groups))
        ),
        bwd_base=tuple(draw(st.lists(size, min_size=positions, max_size=positions))),
        fwd_base=tuple(draw(st.lists(size, min_size=forward_positions + 1, max_size=forward_positions + 1))),
        save_extra_end=tuple(draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))),
        bursts=tuple((t, tuple(sorted(members))) for t, members in bursts),
        burst_released=tuple((t, tuple(sorted(groups))) for t, groups in sorted(released.items())),
        burst_base=tuple(burst_base),
    )


def enumerate_plans(problem: BudgetProblem):
    """(time, peak, saved) of every feasible saved set: the brute-force reference."""
    saveable = [v for v in range(problem.n) if problem.can_save[v]]
    for r in range(len(saveable) + 1):
        for combo in itertools.combinations(saveable, r):
            saved = set(combo)
            if problem.is_feasible(saved):
                yield problem.time_s(saved), problem.peak_bytes(saved)[0], saved


#: found by hypothesis: two plans a picosecond apart, below the solver's resolution
_PICOSECOND_TIE = BudgetProblem(
    inputs=((),) * 6, needed=(0, 1), can_save=(True, True, False, False, False, False),
    can_recompute=(True, True, False, False, False, False),
    cost_s=(1e-12, 1e-12, 0.0, 0.0, 0.0, 0.0003294482802393429), recompute_bytes=(0,) * 6,
    first=(-1,) * 6, last=(-1,) * 6, group=(0,) * 6, group_bytes=(0,), save_last=(0,), fwd_release=(0,),
    bwd_base=(0,), fwd_base=(0, 0), save_extra_end=(0,) * 6,
)  # fmt: skip


def one_row_per_round():
    """Lazy rows one position of each phase per round, and no fall-back to every row: the answer is
    then the rows' generation's own, position by position, even on the few positions drawn here."""
    return mock.patch.multiple(milp, ROWS_PER_ROUND=1, MAX_ROW_ROUNDS=10**6)


@settings(deadline=None)
@given(problems(), st.floats(0.0, 1.2), st.booleans())
@example(_PICOSECOND_TIE, 0.0, False)
def test_milp_time_optimum_matches_brute_force(problem, cap_fraction, lazy_rows):
    plans = list(enumerate_plans(problem))
    assume(plans)
    peaks = sorted(p for _, p, _ in plans)
    cap = int(peaks[0] + cap_fraction * (peaks[-1] - peaks[0]))
    fitting = [t for t, p, _ in plans if p <= cap]
    with one_row_per_round():
        result = solve_budget(problem, cap_bytes=cap, time_limit=10, lazy_rows=lazy_rows)
    if not fitting:
        assert result.saved is None and result.status == "infeasible"
        return
    assert result.status == "optimal" and result.saved is not None
    evaluated = {frozenset(saved): (t, p) for t, p, saved in plans}
    assert result.saved in evaluated, "the answer is not a feasible saved set"
    time_s, peak = evaluated[result.saved]
    # The program's time at its answer is the evaluator's; its peak variable is only pushed down by a
    # tie-breaking term, so it may sit above the evaluator's peak, but never below it: the cap the
    # program enforces bounds the true model peak.
    assert result.program_time_s == pytest.approx(time_s, abs=time_tolerance_s(problem))
    assert peak <= result.program_peak_bytes + peak_tolerance_bytes(problem)
    assert peak <= cap
    assert time_s <= min(fitting) * (1 + MIP_REL_GAP) + time_tolerance_s(problem)


@settings(deadline=None)
@given(problems(), st.booleans())
def test_milp_least_peak_matches_brute_force(problem, lazy_rows):
    plans = list(enumerate_plans(problem))
    assume(plans)
    with one_row_per_round():
        result = solve_budget(problem, minimise="peak", time_limit=10, lazy_rows=lazy_rows)
    assert result.status == "optimal"
    evaluated = {frozenset(saved): p for _, p, saved in plans}
    assert result.saved in evaluated, "the answer is not a feasible saved set"
    peak = evaluated[result.saved]
    assert result.program_peak_bytes == pytest.approx(peak, abs=peak_tolerance_bytes(problem))
    least = min(evaluated.values())
    assert least <= peak <= least * (1 + MIP_REL_GAP) + 1


def _long_schedule(spike: int, first_recompute_bytes: int) -> BudgetProblem:
    """Three chained values over a 400-position backward whose base spikes at ``spike``; each value is
    read at its own position past the spike, so saving it holds its bytes over the spike."""
    positions = 400
    base = [100] * positions
    base[spike] = 1_000
    recompute_bytes = (first_recompute_bytes, 64, 64)
    return BudgetProblem(
        inputs=((), (0,), (1,)), needed=(0, 1, 2), can_save=(True,) * 3, can_recompute=(True,) * 3,
        cost_s=(1e-3, 2e-3, 3e-3), recompute_bytes=recompute_bytes, first=(300, 320, 340),
        last=(300, 320, 340), group=(0, 1, 2), group_bytes=(500, 400, 300), save_last=(300, 320, 340),
        fwd_release=(0, 1, 2), bwd_base=tuple(base), fwd_base=(0, 0, 0, 0),
    )  # fmt: skip


@pytest.mark.parametrize("minimise", ["time", "peak"])
@pytest.mark.parametrize("first_recompute_bytes", [64, 2_000])
def test_lazy_rows_give_the_full_programs_answer_from_the_positions_it_exceeds(
    minimise, first_recompute_bytes
):
    """Lazily, the program starts with no peak rows and gets those of the positions its answers
    exceed: here the spike and the few positions of the answers' recomputations, not one row per
    position, and the full program's answer (same plan, same peak, same proof). With the first
    value's recomputation bigger than the spike, the fastest plan that fits the spike (recompute it)
    exceeds the cap where it is recomputed instead, so the answer must save it."""
    problem = _long_schedule(spike=150, first_recompute_bytes=first_recompute_bytes)
    cap = 1_000 + 500 + 400  # the spike holds two of the three saves, not all three
    kwargs = {"cap_bytes": cap} if minimise == "time" else {"minimise": "peak"}
    full = solve_budget(problem, time_limit=10, **kwargs)
    lazy = solve_budget(problem, time_limit=10, lazy_rows=True, **kwargs)
    assert full.rounds == 1 and full.saved is not None
    assert lazy.rounds >= 2 and lazy.num_rows < full.num_rows / 4
    assert lazy.status == full.status == "optimal"
    assert lazy.saved == full.saved and lazy.peak_bytes == full.peak_bytes
    assert lazy.program_peak_bytes == pytest.approx(
        full.program_peak_bytes, abs=peak_tolerance_bytes(problem)
    )
    assert lazy.bound == pytest.approx(full.bound, rel=MIP_REL_GAP)


def test_unsatisfiable_problem_reports_infeasible():
    # The backward needs value 0, which can be neither saved nor recomputed.
    problem = BudgetProblem(
        inputs=((),),
        needed=(0,),
        can_save=(False,),
        can_recompute=(False,),
        cost_s=(1.0,),
        recompute_bytes=(8,),
        first=(0,),
        last=(0,),
        group=(0,),
        group_bytes=(8,),
        save_last=(0,),
        fwd_release=(0,),
        bwd_base=(0,),
        fwd_base=(0, 0),
    )
    result = solve_budget(problem, cap_bytes=100)
    assert result.saved is None and result.status == "infeasible"


def test_a_stop_with_a_plan_under_an_unknown_code_is_a_limit_not_a_failure(monkeypatch):
    """scipy 1.17 reports HiGHS' node limit as its "other" status 4 ("Solution limit reached", on a
    12-layer GPT's whole program at 50 nodes): the plan it returns is feasible, so the solve reached
    a limit; "failed" is for no plan at all."""
    from autoremat.passes import milp

    def stopped(self, constraints, time_limit, node_limit, root_heuristics=True, *, plan=True):
        result = original(self, constraints, time_limit, node_limit, root_heuristics)
        result.status = 4
        result.x = result.x if plan else None
        return result

    original = milp._Program._milp
    monkeypatch.setattr(milp._Program, "_milp", stopped)
    problem = BudgetProblem(
        inputs=((), (0,)), needed=(1,), can_save=(True, True), can_recompute=(True, True),
        cost_s=(1e-3, 1e-3), recompute_bytes=(8, 8), first=(0, 0), last=(0, 0), group=(0, 1),
        group_bytes=(8, 8), save_last=(0, 0), fwd_release=(0, 0), bwd_base=(0,), fwd_base=(0, 0),
    )  # fmt: skip
    result = solve_budget(problem, cap_bytes=100)
    assert result.saved is not None and result.status == "limit-reached"
    monkeypatch.setattr(milp._Program, "_milp", lambda *args: stopped(*args, plan=False))
    assert solve_budget(problem, cap_bytes=100).status == "failed"


def test_bad_objective_is_a_value_error():
    problem = BudgetProblem((), (), (), (), (), (), (), (), (), (), (), (), (0,), (0,))
    with pytest.raises(ValueError, match="minimise='speed'.*'time' or 'peak'"):
        solve_budget(problem, minimise="speed")


def test_problem_built_from_a_real_graph_matches_brute_force_on_its_decisions():
    """The real-graph problem is the same model: its MILP answer, checked against enumeration over
    the few saveable values of a small MLP."""
    import torch

    from autoremat.cost_models import default_cost_model
    from autoremat.graph.analysis import analyse
    from autoremat.passes.cut import cheap_by
    from autoremat.passes.mincut import solve_min_cut
    from tests.harness import capture_joint

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Sigmoid()
    )
    joint = capture_joint(model, torch.randn(4, 8, requires_grad=True))
    gm = joint.fresh_copy()
    analysis = analyse(gm.graph, num_fwd_outputs=joint.num_fwd_outputs, static_lifetime_input_indices=[])
    costs = default_cost_model(torch.device("cpu")).for_graph(analysis)
    high = solve_min_cut(analysis, cheap_by(analysis, costs.is_cheap_to_recompute))
    problem = build_problem(analysis, costs, high.saved).problem
    assert sum(problem.can_save) <= 14, "test graph grew: enumeration would be slow"
    plans = list(enumerate_plans(problem))
    peaks = sorted(p for _, p, _ in plans)
    cap = (peaks[0] + peaks[-1]) // 2
    result = solve_budget(problem, cap_bytes=cap)
    best = min(t for t, p, _ in plans if p <= cap)
    assert result.peak_bytes <= cap
    assert result.time_s <= best * (1 + MIP_REL_GAP) + time_tolerance_s(problem)


def test_a_solve_without_root_sub_mips_is_quiet_and_finds_the_optimum():
    """``root_heuristics=False`` passes HiGHS options scipy does not list: its "passed verbatim"
    warning must not reach the user, and the answer is still the program's optimum."""
    import warnings

    problem = BudgetProblem(
        inputs=((), (0,)), needed=(1,), can_save=(True, True), can_recompute=(True, True),
        cost_s=(1e-3, 2e-3), recompute_bytes=(8, 8), first=(0, 0), last=(0, 0), group=(0, 1),
        group_bytes=(8, 16), save_last=(0, 0), fwd_release=(0, 0), bwd_base=(0,), fwd_base=(0, 0),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = solve_budget(problem, cap_bytes=100, root_heuristics=False)
    assert not [w for w in caught if "Unrecognized options" in str(w.message)]
    assert quiet.saved == solve_budget(problem, cap_bytes=100).saved and quiet.status == "optimal"
