"""Budget semantics end to end: fractions, "auto", solver choice and failure, always a correct plan."""

from __future__ import annotations

import logging

import pytest
import torch

import autoremat
import autoremat.partitioner as partitioner_module
import autoremat.passes.milp_solver as milp_solver_module
import autoremat.passes.solver as solver_module
from tests.harness import EAGER_TOL, assert_steps_match, compiled_step, train_step
from tests.models import Transformer


def _backend(budget, **kw):
    return autoremat.backend(compiler="eager", memory_budget=budget, **kw)


def _model():
    torch.manual_seed(0)
    return Transformer(d=16, layers=2), (torch.randn(4, 32, 16, requires_grad=True),)


def _plan(budget, **kw) -> autoremat.Plan:
    model, inputs = _model()
    autoremat.clear_plans()
    got = compiled_step(model, _backend(budget, **kw), inputs)
    assert_steps_match(got, train_step(model, model, inputs), EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    return plan


def test_fraction_interpolates_between_least_and_runtime_optimal_peaks():
    high, low, half = _plan(1.0), _plan(0.0), _plan(0.5)
    assert low.predicted_peak_bytes == low.least_bytes < high.predicted_peak_bytes
    assert half.least_bytes <= half.target_bytes <= half.runtime_optimal_bytes
    assert half.target_bytes == int(half.least_bytes + 0.5 * (half.runtime_optimal_bytes - half.least_bytes))
    assert low.predicted_peak_bytes <= half.predicted_peak_bytes <= half.target_bytes
    assert half.predicted_recompute_s <= low.predicted_recompute_s * (1 + 1e-9)
    assert half.solver in ("milp", "greedy") and half.solver_stats["milp_solves"] >= 1


def test_auto_budget_fits_what_the_device_has_free(monkeypatch):
    monkeypatch.setattr(partitioner_module, "available_bytes", lambda device: 10**12)
    roomy = _plan("auto")
    assert roomy.solver == "min-cut" and any("resolved to 1000000000000 bytes" in n for n in roomy.notes)
    high, low = _plan(1.0), _plan(0.0)
    tight = (low.predicted_peak_bytes + high.predicted_peak_bytes) // 2
    monkeypatch.setattr(partitioner_module, "available_bytes", lambda device: tight)
    fitted = _plan("auto")
    assert fitted.target_bytes == tight and fitted.predicted_peak_bytes <= tight


_MEMINFO = """MemTotal:       32000000 kB
MemFree:         1000000 kB
MemAvailable:    8000000 kB
Buffers:          200000 kB
"""


def test_auto_on_cpu_claims_half_of_memavailable(monkeypatch):
    import io

    from autoremat.cost_models import device_memory

    real_open = open

    def fake_open(path, *args, **kwargs):
        return io.StringIO(_MEMINFO) if path == "/proc/meminfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(device_memory, "open", fake_open, raising=False)
    half_of_memavailable = 8_000_000 * 1024 // 2
    assert device_memory.available_bytes(torch.device("cpu")) == half_of_memavailable == 4_096_000_000
    assert device_memory.available_bytes(None) == half_of_memavailable


def test_auto_on_cuda_claims_90_percent_of_free_plus_unused_cached_memory(monkeypatch):
    from autoremat.cost_models import device_memory

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    # free 10 GiB + cached but unused 6 - 2 = 4 GiB, of which 90%
    assert device_memory.available_bytes(torch.device("cuda", 0)) == 13_529_146_982


def test_greedy_solver_option_never_calls_the_milp(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("MILP called with solver='greedy'")

    monkeypatch.setattr(milp_solver_module, "solve_budget", forbidden)
    plan = _plan(0.3, solver="greedy")
    assert plan.solver in ("greedy", "min-cut") and plan.predicted_peak_bytes <= plan.target_bytes
    assert plan.solver_stats.get("milp_solves", 0) == 0


def test_milp_failure_falls_back_to_greedy_with_a_logged_note(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("injected HiGHS failure")

    monkeypatch.setattr(milp_solver_module, "solve_budget", broken)
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        plan = _plan(0.3)
    assert plan.status in ("within-budget", "optimal") and plan.predicted_peak_bytes <= plan.target_bytes
    assert any("injected HiGHS failure" in n for n in plan.notes)
    assert "injected HiGHS failure" in caplog.text


def test_tiny_time_limit_still_gives_a_plan_within_budget():
    plan = _plan(0.3, solver_time_limit=0.001)
    assert plan.predicted_peak_bytes <= plan.target_bytes
    assert plan.status in ("within-budget", "optimal")
    assert any("time limit" in n for n in plan.notes)


def test_same_graph_and_options_give_the_same_plan():
    assert _plan(0.4).digest() == _plan(0.4).digest()


def test_plan_records_solver_status_gap_and_problem_size():
    plan = _plan(0.5)
    stats = plan.solver_stats
    assert stats["milp_binaries"] > 0 and stats["milp_rows"] > 0 and stats["milp_seconds"] > 0
    if plan.solver == "milp":
        assert plan.optimality_gap is not None and plan.optimality_gap >= 0
    else:
        assert plan.optimality_gap is None
    restored = autoremat.Plan.from_json(plan.to_json())
    assert restored.solver_stats == stats and restored.predicted_peak_bytes == plan.predicted_peak_bytes


def test_plan_says_where_its_partition_time_went(monkeypatch):
    """The stages add up to the partition's time, so a benchmark's breakdown accounts for all of it;
    a stage that was never entered is absent, one whose solver failed still counts."""
    plan = _plan(0.5)
    stages = plan.solver_stats["stage_seconds"]
    expected = {"partition", "analyse", "runtime-optimal cut", "search", "milp ahead", "milp fastest"}
    expected |= {"least-bytes cut", "greedy prepare", "greedy explore", "milp explore", "milp budget"}
    assert expected | {"split", "plan"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
    assert sum(stages.values()) == pytest.approx(plan.partition_seconds, rel=0.01, abs=0.005)
    assert set(_plan(1.0).solver_stats["stage_seconds"]) == {
        "partition",
        "analyse",
        "runtime-optimal cut",
        "search",
        "milp fastest",
        "milp ahead",  # the end of the solves ahead (none started)
        "split",
        "plan",
    }

    def fail(self, ctx, cap_bytes):
        raise RuntimeError("boom")

    monkeypatch.setattr(milp_solver_module.MilpSolver, "propose", fail)
    failed = _plan(0.5)
    assert "milp budget" in failed.solver_stats["stage_seconds"]
    assert "greedy budget" in failed.solver_stats["stage_seconds"]  # the fallback proposed


def test_stage_clock_charges_each_second_to_the_innermost_stage():
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 15.0])
    clock = solver_module.StageClock(timer=lambda: next(ticks))  # 0
    with clock.stage("outer"):  # 1: nothing ran before it
        with clock.stage("inner"):  # 3: outer 2
            pass  # 6: inner 3
        with pytest.raises(RuntimeError), clock.stage("inner"):  # 10: outer 4
            raise RuntimeError  # 15: inner 5, charged on the way out
    assert clock.seconds() == {"outer": 6.0, "inner": 8.0}  # 15: outer 0 more


def _spy_on_solves(monkeypatch, ranks: int) -> list[dict]:
    """The keyword arguments of every MILP solve, on ``ranks`` ranks."""
    calls = []
    real = milp_solver_module.solve_budget

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(partitioner_module, "world_size", lambda: ranks)
    monkeypatch.setattr(milp_solver_module, "solve_budget", spy)
    return calls


def test_plans_are_reproducible_and_several_ranks_ignore_the_clock(monkeypatch):
    calls = _spy_on_solves(monkeypatch, ranks=2)
    first = _plan(0.3, solver_time_limit=0.001)  # the clock would stop a single-rank solve at once
    again = _plan(0.3, solver_time_limit=0.001)
    assert calls and all(c["node_limit"] == milp_solver_module.MILP_NODE_LIMIT for c in calls)
    assert all(c["time_limit"] == solver_module.DETERMINISTIC_SAFETY_SECONDS for c in calls)
    assert first.digest() == again.digest()
    assert first.predicted_peak_bytes <= first.target_bytes


def test_one_rank_gives_no_solve_a_clock_slice(monkeypatch):
    """On one rank too, a MILP solve is stopped by its node limit, not by a share of the time limit
    (a share made the plan depend on the machine's speed: a 12-layer GPT's solves ran out of it)."""
    calls = _spy_on_solves(monkeypatch, ranks=1)
    plan = _plan(0.3, solver_time_limit=100.0)
    assert calls and all(c["node_limit"] == milp_solver_module.MILP_NODE_LIMIT for c in calls)
    # each solve may use what is left of the safety net (most of it: the search takes seconds)
    assert all(c["time_limit"] > 50.0 for c in calls)
    assert not any("time limit" in n for n in plan.notes)


def test_a_new_solver_is_one_class_plus_a_registry_line(monkeypatch):
    """The registry is the only list of solvers: option validation and the search both read it."""
    import autoremat.passes.registry as registry

    explored = []

    class LeastBytes:
        name = "least-bytes"

        def explore(self, ctx):
            explored.append(ctx.low)
            ctx.pool.add(ctx.low, self.name)

        def propose(self, ctx, cap_bytes):
            return None

    with pytest.raises(ValueError, match="least-bytes"):
        _backend(0.0, solver="least-bytes")
    monkeypatch.setitem(registry.SOLVERS, "least-bytes", LeastBytes)
    plan = _plan(0.0, solver="least-bytes")
    assert explored, "the registered solver was never asked"
    assert plan.predicted_peak_bytes <= plan.target_bytes


def test_budget_one_is_never_a_plan_another_beats_on_peak_and_time(monkeypatch):
    """The budget-1.0 plan is the min-cut's unless the solver's ``fastest`` finds one with no more
    peak and less predicted time (the min-cut minimises its own weights, not that time). A stand-in
    solver offers a greedy plan below the min-cut's peak with its time zeroed, a plan that beats the
    min-cut's on both counts, which budget 1.0 must then take; and, when the least-bytes cut peaks
    above the min-cut's, that one with a time below zero, which it must not take."""
    import dataclasses

    import autoremat.passes.registry as registry
    from autoremat.passes.cut import least_memory_rules
    from autoremat.passes.greedy import greedy_sweep
    from autoremat.passes.mincut import solve_min_cut

    offered = []

    class Dominator:
        name = "dominator"

        def explore(self, ctx):
            return None

        def propose(self, ctx, cap_bytes):
            return None

        def fastest(self, ctx, cap_bytes):
            cuts = greedy_sweep(ctx.analysis, base=ctx.base, cost_s=ctx.costs.standalone_s, points=4)
            pooled = [ctx.pool.add(cut, self.name) for cut in cuts]
            lower = min(pooled, key=lambda c: c.peak)
            ctx.pool.plans[lower.cut.saved] = dataclasses.replace(lower, time_s=0.0)
            # and one that would be faster still but peaks above the min-cut's plan: not for 1.0
            above = ctx.pool.add(solve_min_cut(ctx.analysis, least_memory_rules(ctx.base)), self.name)
            if above.peak > cap_bytes:
                ctx.pool.plans[above.cut.saved] = dataclasses.replace(above, time_s=-1.0)
            offered.append((lower.peak, cap_bytes))

    monkeypatch.setitem(registry.SOLVERS, "dominator", Dominator)
    baseline = _plan(1.0)
    assert baseline.solver == "min-cut"
    plan = _plan(1.0, solver="dominator")
    ((peak, cap),) = offered
    assert cap == baseline.predicted_peak_bytes and peak <= cap, "the test needs a lower-peak plan"
    assert plan.solver == "dominator" and plan.predicted_peak_bytes == peak
