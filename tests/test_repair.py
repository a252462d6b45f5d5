"""The repair of a plan the simulation rejected (``passes/repair.py``): its rankings against the
brute-force evaluator, its search against simulations that see only part of the plan, and its use
by the MILP solver on a graph of repeated blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autoremat.passes.budget_problem import BudgetProblem
from autoremat.passes.repair import certified_gap, releases, repair
from tests.test_budget_milp import enumerate_plans, problems


def _saved_plans(problem: BudgetProblem, data) -> set[int]:
    plans = list(enumerate_plans(problem))
    assume(plans)
    return set(data.draw(st.sampled_from([saved for _, _, saved in plans])))


@settings(deadline=None)
@given(problems(), st.data())
def test_each_release_costs_what_the_evaluator_says_and_the_ranking_is_cheapest_per_byte_first(problem, data):
    saved = _saved_plans(problem, data)
    ranking = releases(problem, saved)
    listed = {r.group: r for r in ranking}
    for group in {problem.group[v] for v in saved}:
        members = {v for v in saved if problem.group[v] == group}
        remaining = saved - members
        if problem.group_bytes[group] <= 0 or not problem.is_feasible(remaining):
            assert group not in listed
            continue
        release = listed[group]
        assert set(release.members) == members and release.nbytes == problem.group_bytes[group]
        added = problem.time_s(remaining) - problem.time_s(saved)
        assert release.seconds == pytest.approx(added, abs=1e-12)
    ratios = [(r.seconds / r.nbytes, r.group) for r in ranking]
    assert ratios == sorted(ratios)


@settings(deadline=None)
@given(problems(), st.data(), st.integers(1, 4))
def test_a_repaired_plan_fits_is_feasible_and_only_releases(problem, data, max_rounds):
    """With the program's own peak as the simulation: whatever the repair returns is accepted by
    it, is a plan the problem allows, saves a subset of the rejected plan, and took at most
    ``max_rounds`` simulations."""
    saved = _saved_plans(problem, data)
    peak = problem.peak_bytes(saved)[0]
    target = data.draw(st.integers(0, peak))
    calls = []

    def excess(plan: frozenset[int]) -> int:
        calls.append(plan)
        return problem.peak_bytes(set(plan))[0] - target

    repaired = repair(problem, saved, excess, max_rounds=max_rounds)
    assert len(calls) <= max_rounds
    if repaired is None:
        return
    assert repaired <= saved and problem.is_feasible(set(repaired))
    assert problem.peak_bytes(set(repaired))[0] <= target
    if peak <= target:
        assert repaired == saved, "a plan that fits is left as it is"


def _chain(n: int, nbytes: list[int], cost_s: list[float]) -> BudgetProblem:
    """``n`` independent values the backward reads, each its own storage group."""
    return BudgetProblem(
        inputs=((),) * n,
        needed=tuple(range(n)),
        can_save=(True,) * n,
        can_recompute=(True,) * n,
        cost_s=tuple(cost_s),
        recompute_bytes=(0,) * n,
        first=(0,) * n,
        last=(0,) * n,
        group=tuple(range(n)),
        group_bytes=tuple(nbytes),
        save_last=(0,) * n,
        fwd_release=(0,) * n,
        bwd_base=(0,),
        fwd_base=(0, 0),
    )


def test_releases_the_simulation_does_not_see_are_dropped_and_the_next_ones_tried():
    """The simulated peak sees only values 2 and 3 (live at its position); the cheapest releases
    per byte are 0 and 1. The repair finds out by simulating, keeps neither, and releases 2."""
    problem = _chain(4, [100, 100, 100, 100], [1e-6, 2e-6, 3e-6, 4e-6])
    seen = {2, 3}

    def excess(plan: frozenset[int]) -> int:
        return sum(100 for v in plan if v in seen) - 150

    assert repair(problem, range(4), excess) == frozenset({0, 1, 3})


def test_one_release_that_covers_the_rest_alone_beats_the_ranking_s_next_ones():
    """Cheapest per byte first, 60 bytes (0.6 µs) then 100 bytes (2 µs) would cover an excess of
    100: the 100 bytes alone cost less, and are released alone."""
    problem = _chain(3, [60, 100, 50], [6e-7, 2e-6, 5e-5])
    assert [r.group for r in releases(problem, range(3))] == [0, 1, 2]

    def excess(plan: frozenset[int]) -> int:
        return sum(problem.group_bytes[v] for v in plan) - 110

    assert repair(problem, range(3), excess) == frozenset({0, 2})


def test_no_release_means_no_repair():
    problem = _chain(2, [100, 100], [1e-6, 1e-6])
    problem = BudgetProblem(**{**problem.__dict__, "can_recompute": (False, False)})
    assert releases(problem, {0, 1}) == []
    assert repair(problem, {0, 1}, lambda plan: 1) is None


@settings(deadline=None)
@given(problems(), st.data())
def test_a_repaired_plans_gap_is_measured_against_the_best_bound_that_covers_it(problem, data):
    """With the true optimum at each of two caps (brute force) as their bounds: the gap is taken
    against the tighter cap's bound when the plan fits it, the looser cap's when it fits only that,
    and there is none when it fits neither; an optimal plan's gap is 0."""
    plans = list(enumerate_plans(problem))
    assume(plans)
    peaks = sorted(p for _, p, _ in plans)
    low, high = sorted(data.draw(st.lists(st.integers(peaks[0], peaks[-1]), min_size=2, max_size=2)))
    optimum = {cap: min(t for t, p, _ in plans if p <= cap) for cap in (low, high)}
    seconds, peak, saved = data.draw(st.sampled_from(plans))
    gap = certified_gap(problem, saved, [(high, optimum[high]), (low, optimum[low]), (low, None)])
    if peak > high:
        assert gap is None
        return
    best = optimum[low] if peak <= low else optimum[high]
    assert gap == pytest.approx((seconds - best) / seconds if seconds else 0.0, abs=1e-9)
    assert 0.0 <= gap <= 1.0
    if seconds == best:
        assert gap == pytest.approx(0.0, abs=1e-9)
    assert certified_gap(problem, saved, [(high, None)]) is None


def _gpt_with_misses(monkeypatch, proven: bool):
    """Plan a 3-layer GPT forced onto the block-restricted programs, with the target's solve given a
    cap 20% above it (its answer then misses the target) and every lowered cap's solve answering the
    same again (as when the model's shortfall grows as the cap is lowered). ``proven`` makes every
    repaired plan count as proven within the MILP's gap. Returns the plan and the caps solved."""
    import autoremat
    from autoremat.demo.model import GPT, GPTConfig, example_batch
    from autoremat.passes import milp_solver
    from tests.harness import assert_steps_match, compiled_step, train_step

    monkeypatch.setattr(milp_solver, "FULL_PROGRAM_MAX_CANDIDATES", 0)
    if proven:
        monkeypatch.setattr(milp_solver, "within_gap", lambda gap: True)
    solve_all = milp_solver.MilpSolver._solve_all
    caps: list[int] = []
    first: list = []

    def missing(self, ctx, built, **kwargs):
        if kwargs.get("tie") or "cap_bytes" not in kwargs:
            return solve_all(self, ctx, built, **kwargs)
        caps.append(kwargs["cap_bytes"])
        if len(caps) == 1:
            first.extend(solve_all(self, ctx, built, **{**kwargs, "cap_bytes": int(caps[0] * 1.2)}))
        return first

    monkeypatch.setattr(milp_solver.MilpSolver, "_solve_all", missing)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, d_model=16)
    torch.manual_seed(0)
    model = GPT(cfg)
    batch = example_batch(cfg, 2, 16)
    expected = train_step(model, model, batch)
    backend = autoremat.backend(memory_budget=0.3, compiler="eager")
    assert_steps_match(compiled_step(model, backend, batch), expected)
    plan = autoremat.recent_plans()[-1]
    assert plan.predicted_peak_bytes <= plan.target_bytes
    return plan, caps


def test_a_second_miss_on_a_graph_of_blocks_is_repaired_instead_of_solved_again(monkeypatch):
    """The first miss is repaired (not proven: the search goes on at a lowered cap), the second is
    repaired and ends the search: no third cap. The plan fits and trains like eager."""
    plan, caps = _gpt_with_misses(monkeypatch, proven=False)
    # the loop reaches a third cap unless the second repair made a plan fit
    assert len(caps) == 2 and caps[1] < caps[0], "the target's cap, then one lowered cap, no third"
    assert plan.solver_stats.get("milp_repairs") == 2


def test_a_repair_proven_within_the_gap_ends_the_search_at_the_first_miss(monkeypatch):
    plan, caps = _gpt_with_misses(monkeypatch, proven=True)
    assert len(caps) == 1 and plan.solver_stats.get("milp_repairs") == 1


def test_an_unproven_repair_gives_way_to_a_proven_answer_as_fast():
    """Of a proven MILP answer and an unproven repaired plan within the MILP's gap of each other in
    time, the proven one is offered (the time model cannot tell them apart); a repair faster by
    more than the gap, or proven itself, or an answer unproven or over the cap, keeps the repair."""
    from autoremat.passes.cut import CutResult
    from autoremat.passes.milp import MIP_REL_GAP
    from autoremat.passes.milp_solver import _proven_as_fast
    from autoremat.passes.pool import Candidate

    def plan(name: str, peak: int, time_s: float, gap: float | None) -> Candidate:
        return Candidate(CutResult((name,), 0), peak, time_s, "milp", gap)

    answer = plan("a", 100, 1.0, 0.005)
    assert _proven_as_fast(answer, plan("r", 100, 0.995, 0.04), 100)
    assert not _proven_as_fast(answer, plan("r", 100, 1.0 - 2 * MIP_REL_GAP, 0.04), 100)
    assert not _proven_as_fast(answer, plan("r", 100, 0.995, 0.005), 100)
    assert not _proven_as_fast(plan("a", 100, 1.0, 0.04), plan("r", 100, 0.995, 0.04), 100)
    assert not _proven_as_fast(plan("a", 101, 1.0, 0.005), plan("r", 100, 0.995, 0.04), 100)
    repaired = plan("r", 100, 0.995, 0.04)
    assert not _proven_as_fast(repaired, repaired, 100), "the repair that ended the search is kept"
