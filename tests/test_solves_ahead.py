"""Solves started ahead (passes/solves_ahead.py, ``MilpSolver.explore_ahead/propose_ahead``): an answer
taken is the one solved in turn, a guess that has not begun is left to the caller, failures surface
where the answer is taken, no thread outlives the search, and the search's plans are those it makes
with every solve in turn, with or without a check, and when the caps it guessed were wrong."""

from __future__ import annotations

import ctypes
import logging
import os
import threading

import pytest

import autoremat.passes.search as search_module
from autoremat.passes import greedy, milp, milp_solver
from autoremat.passes.pool import Pool
from autoremat.passes.solves_ahead import SolvesAhead, solve_key
from tests.test_inductor_check import ScaledCheck, _plan


def _solve_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("autoremat-solve")]


def test_an_answer_taken_is_the_one_started_and_each_is_taken_once():
    ahead: SolvesAhead[int] = SolvesAhead()
    assert ahead.start("a", lambda: 6 * 7)
    assert not ahead.start("a", lambda: 0)  # queued already: not replaced
    assert ahead.take("a") == 42 and ahead.take("a") is None and ahead.take("never") is None
    ahead.close()
    assert not _solve_threads()


def test_a_solve_that_has_not_begun_is_cancelled_and_left_to_the_caller():
    ahead: SolvesAhead[str] = SolvesAhead()
    release, ran = threading.Event(), []
    ahead.start("busy", lambda: release.wait(10) and "busy")
    ahead.start("queued", lambda: ran.append("queued") or "queued")
    assert ahead.take("queued") is None  # behind a running solve: the caller solves it in turn
    release.set()
    assert ahead.take("busy") == "busy"
    ahead.close()
    assert ran == [] and not _solve_threads()


def test_guesses_not_begun_are_dropped_and_close_waits_for_the_one_running():
    ahead: SolvesAhead[str] = SolvesAhead()
    release, ran = threading.Event(), []
    ahead.start("running", lambda: release.wait(10) and ran.append("running"))
    ahead.start("pending", lambda: ran.append("pending"))
    ahead.cancel_pending()
    assert ahead.take("pending") is None
    threading.Timer(0.2, release.set).start()
    ahead.close()
    assert ran == ["running"] and not _solve_threads()


def test_a_failing_solve_raises_where_its_answer_is_taken():
    ahead: SolvesAhead[int] = SolvesAhead()

    def fails() -> int:
        raise RuntimeError("HiGHS exploded")

    ahead.start("k", fails)
    with pytest.raises(RuntimeError, match="HiGHS exploded"):
        ahead.take("k")
    ahead.close()


def test_switched_off_nothing_starts():
    ahead: SolvesAhead[int] = SolvesAhead(enabled=False)
    assert not ahead.start("k", lambda: 1)
    assert ahead.take("k") is None


def test_keys_freeze_lists_and_dicts_and_refuse_what_cannot_be_hashed():
    assert solve_key(1, {"tied": [[1, 2], [3]], "cap_bytes": 5}) == solve_key(
        1, {"cap_bytes": 5, "tied": ((1, 2), (3,))}
    )
    assert solve_key(1, {"cap_bytes": 5}) != solve_key(1, {"cap_bytes": 6})
    assert solve_key(1, {"x": {1, 2}}) is None  # a set is not frozen: never started ahead


def _digest(plan):
    return (plan.digest(), plan.predicted_peak_bytes, plan.status, plan.optimality_gap, plan.target_bytes)


@pytest.mark.parametrize(
    "budget, check",
    [(0.5, None), (0.25, None), (0.5, ScaledCheck(share=0.7)), (0.75, ScaledCheck(share=0.8))],
    ids=["0.5", "0.25", "0.5-checked", "0.75-checked"],
)
def test_the_search_makes_the_plans_it_makes_with_every_solve_in_turn(budget, check, monkeypatch):
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", False)
    in_turn = _plan(budget, check and ScaledCheck(share=check.share), monkeypatch)
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", True)
    ahead = _plan(budget, check, monkeypatch)
    assert _digest(ahead) == _digest(in_turn)
    assert ahead.solver_stats["milp_solves"] == in_turn.solver_stats["milp_solves"]
    assert ahead.solver_stats.get("milp_solves_ahead", 0) > 0  # the solves did run ahead
    assert "milp_solves_ahead" not in in_turn.solver_stats
    assert not _solve_threads()


@pytest.mark.parametrize("check", [None, ScaledCheck(share=0.7)], ids=["unchecked", "checked"])
def test_greedys_cuts_made_during_the_fastest_solve_reach_the_pool_in_the_same_order(check, monkeypatch):
    """``search._prepare`` lets greedy cut its sweep while budget 1.0's solve runs ahead; the pool
    must see every plan, from every source, in the order it sees them when greedy cuts in turn."""
    added: list[tuple[str, object]] = []
    add = Pool.add

    def spy(self, cut, source, gap=None):
        added.append((source, tuple(n.name for n in cut.saved)))
        return add(self, cut, source, gap)

    monkeypatch.setattr(Pool, "add", spy)
    prepare = search_module._prepare
    monkeypatch.setattr(search_module, "_prepare", lambda ctx, chosen, explorers: prepare(ctx, chosen, []))
    in_turn = _plan(0.5, check and ScaledCheck(share=check.share), monkeypatch)
    order, added[:] = list(added), []
    monkeypatch.setattr(search_module, "_prepare", prepare)
    ahead = _plan(0.5, check, monkeypatch)
    assert added == order and _digest(ahead) == _digest(in_turn)
    assert "greedy prepare" in ahead.solver_stats["stage_seconds"]
    assert "greedy prepare" not in in_turn.solver_stats["stage_seconds"]
    assert ahead.solver_stats["milp_solves_ahead"] >= 1 and not _solve_threads()


def test_budget_ones_solve_is_the_one_taken_ahead_while_greedy_cuts(monkeypatch):
    ahead = _plan(0.5, None, monkeypatch)
    monkeypatch.setattr(milp_solver.MilpSolver, "fastest_ahead", lambda self, ctx, cap_bytes: None)
    without = _plan(0.5, None, monkeypatch)
    assert _digest(ahead) == _digest(without)
    assert ahead.solver_stats["milp_solves_ahead"] == without.solver_stats.get("milp_solves_ahead", 0) + 1


def test_a_failed_prepare_leaves_the_work_to_explore_and_says_nothing(monkeypatch):
    calls = []
    sweep = greedy.greedy_sweep

    def fails_once(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return sweep(*args, **kwargs)

    reference = _plan(0.5, None, monkeypatch)
    monkeypatch.setattr(greedy, "greedy_sweep", fails_once)
    plan = _plan(0.5, None, monkeypatch)
    assert calls == [0, 1] and _digest(plan) == _digest(reference)
    assert not any("boom" in note for note in plan.notes)


def test_an_answer_the_safety_net_cut_short_ahead_is_solved_again_in_turn(monkeypatch):
    """A solve ahead reads its time limit when it is queued, earlier than in turn: an answer that
    ran into it is not taken (in turn it might have had the time), and the plan is the one solved
    in turn."""
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", False)
    in_turn = _plan(0.5, None, monkeypatch)
    timed = milp_solver._timed_solve

    def out_of_time(problem, *, time_limit, **kwargs):
        _, answer = timed(problem, time_limit=time_limit, **kwargs)
        return 0.0, answer  # as if its limit had been no longer than it ran

    monkeypatch.setattr(milp_solver, "_timed_solve", out_of_time)
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", True)
    ahead = _plan(0.5, None, monkeypatch)
    assert _digest(ahead) == _digest(in_turn)
    assert ahead.solver_stats["milp_solves_started_ahead"] > 0
    assert "milp_solves_ahead" not in ahead.solver_stats  # none taken


def test_when_the_least_plan_is_not_the_guessed_one_the_guesses_are_dropped(monkeypatch):
    """The target's and the grid's caps are guessed on the model's least-peak plan before the
    check reads the scale; when the check makes another plan the least, the caps change, the
    guesses not begun are dropped, and the plan is the one solved in turn."""
    scale = search_module._Checked.scale

    def second_lowest(self, runtime_optimal):
        least, high, low = scale(self, runtime_optimal)
        lows = search_module._lowest_first(self.ctx.pool)
        other = lows[1] if len(lows) > 1 else least
        return other, high, self.peak(other)

    monkeypatch.setattr(search_module._Checked, "scale", second_lowest)
    forgotten = []
    forget = milp_solver.MilpSolver.forget_ahead
    monkeypatch.setattr(
        milp_solver.MilpSolver, "forget_ahead", lambda self: forgotten.append(1) or forget(self)
    )
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", False)
    in_turn = _plan(0.5, ScaledCheck(share=0.7), monkeypatch)
    monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", True)
    forgotten.clear()
    ahead = _plan(0.5, ScaledCheck(share=0.7), monkeypatch)
    assert forgotten == [1]
    assert _digest(ahead) == _digest(in_turn) and not _solve_threads()


def test_two_solves_at_once_keep_native_output_off_the_terminal_until_both_end(capfd, caplog):
    """Solves on two threads share one redirection of fds 1 and 2: the first to end must not
    restore them under the other."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with milp.native_output_to_debug_log():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with milp.native_output_to_debug_log():
            second_in.set()
            first_out.wait(10)  # the first solve has ended: its output swap must still hold
            ctypes.CDLL(None).printf(b"HighsMipSolverData from the second solve\n")
            os.write(2, b"HighsLp stderr from the second solve\n")

    with caplog.at_level(logging.INFO, logger="autoremat"):
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    os.write(1, b"after both\n")
    out, err = capfd.readouterr()
    assert "second solve" not in out + err, (out, err)
    assert "after both" in out


def test_on_a_graph_of_blocks_the_tied_solves_and_relaxations_ahead_leave_the_plan_as_it_was(monkeypatch):
    """Forced onto the block-restricted programs (the threshold lowered to a 3-layer GPT): the
    least-peak search's tied solve runs beside the explorers and each relaxation beside the whole
    program's try; the plan and its proof are those of every solve in turn."""
    import torch

    import autoremat
    from autoremat.demo.model import GPT, GPTConfig, example_batch
    from tests.harness import compiled_step

    monkeypatch.setattr(milp_solver, "FULL_PROGRAM_MAX_CANDIDATES", 0)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, d_model=16)
    torch.manual_seed(0)
    model, batch = GPT(cfg), example_batch(cfg, 2, 16)
    plans = {}
    for ahead in (False, True):
        monkeypatch.setattr(milp_solver, "SOLVE_AHEAD", ahead)
        compiled_step(model, autoremat.backend(memory_budget=0.3, compiler="eager"), batch)
        plans[ahead] = autoremat.recent_plans()[-1]
    assert plans[True].solver_stats.get("milp_restricted") == "mixed"
    assert _digest(plans[True]) == _digest(plans[False])
    assert plans[True].solver_stats["milp_solves_ahead"] > 0 and not _solve_threads()
