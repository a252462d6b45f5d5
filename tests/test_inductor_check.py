"""The search on checked peaks (passes/search.py, passes/inductor_check.py): the budget is read on
the peaks the check reports, the fastest plan that fits them wins, strict mode judges feasibility on
them, and a failing check degrades to the memory model with a note.

The check here is a stand-in with a known answer, plugged into the codegen-free compile: fast, and
it pins the search's logic; tests/test_inductor_peak.py runs the real Inductor check."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

import autoremat
import autoremat.partitioner as partitioner_module
from autoremat.passes.pool import Candidate
from autoremat.passes.search import _Checked
from autoremat.passes.solver import Deadline, StageClock
from tests.harness import EAGER_TOL, assert_steps_match, compiled_step, train_step
from tests.models import Transformer


class ScaledCheck:
    """Reports ``share`` of the model's peak, less ``bonus`` bytes for the plans ``favour`` picks:
    a schedule that fuses buffers away, and that can rank plans differently from the model."""

    name = "stand-in"

    def __init__(
        self,
        share: float = 0.7,
        bonus: int = 0,
        favour: Callable[[Candidate], bool] = lambda c: False,
        fail: bool = False,
    ) -> None:
        self.share, self.bonus, self.favour, self.fail = share, bonus, favour, fail
        self.peaks: dict[tuple, int] = {}
        self.seconds = 0.0

    @property
    def checks(self) -> int:
        return len(self.peaks)

    def known(self, candidate: Candidate) -> int | None:
        return self.peaks.get(candidate.cut.saved)

    def peak(self, candidate: Candidate) -> int:
        if self.fail:
            raise RuntimeError("lowering exploded")
        value = int(candidate.peak * self.share)
        if self.favour(candidate):
            value -= self.bonus
        return self.peaks.setdefault(candidate.cut.saved, value)

    def confirm(self, candidate: Candidate) -> int:
        return self.peak(candidate)  # nothing estimated


def _plan(budget, check: ScaledCheck | None, monkeypatch, **kw) -> autoremat.Plan:
    monkeypatch.setattr(partitioner_module.RematPartitioner, "_check", lambda self, gm, analysis: check)
    torch.manual_seed(0)
    model, inputs = Transformer(d=16, layers=2), (torch.randn(4, 32, 16, requires_grad=True),)
    autoremat.clear_plans()
    backend = autoremat.backend(compiler="eager", memory_budget=budget, **kw)
    got = compiled_step(model, backend, inputs)
    assert_steps_match(got, train_step(model, model, inputs), EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    return plan


def _candidate(name: str, peak: int, time_s: float) -> Candidate:
    """A pooled plan stand-in: only its key, model peak and time matter to ``_Checked``."""
    return Candidate(SimpleNamespace(saved=(name,)), peak, time_s, "test")


def _checked_over(plans, check: ScaledCheck) -> _Checked:
    """``_Checked`` over a pool of exactly ``plans``."""
    pool = SimpleNamespace(plans={c.cut.saved: c for c in plans})
    return _Checked(SimpleNamespace(pool=pool, deadline=Deadline(60.0), notes=[], clock=StageClock()), check)


def test_a_fraction_is_read_on_the_checked_peaks(monkeypatch):
    check = ScaledCheck(share=0.7)
    plan = _plan(0.5, check, monkeypatch)
    assert plan.solver_stats["peak_model"] == "stand-in" and plan.solver_stats["checked_plans"] >= 3
    low, high = plan.least_bytes, plan.runtime_optimal_bytes
    assert plan.target_bytes == int(low + 0.5 * (high - low))
    assert plan.predicted_peak_bytes in check.peaks.values()
    assert low <= plan.predicted_peak_bytes <= plan.target_bytes
    unchecked = _plan(0.5, None, monkeypatch)
    assert unchecked.solver_stats["peak_model"] == "op-by-op"
    # a uniform rescaling ranks plans as the model does: the same plan, its peak rescaled
    assert plan.digest() == unchecked.digest()
    assert plan.predicted_peak_bytes == int(unchecked.predicted_peak_bytes * 0.7)


def test_the_budget_at_one_reports_the_checked_peak_of_the_runtime_optimal_plan(monkeypatch):
    checked, unchecked = _plan(1.0, ScaledCheck(0.7), monkeypatch), _plan(1.0, None, monkeypatch)
    assert checked.digest() == unchecked.digest()
    assert checked.predicted_peak_bytes == int(unchecked.predicted_peak_bytes * 0.7)


def test_the_fastest_plan_that_fits_the_checked_target_wins(monkeypatch):
    """Lean plans check far lower than the model says: at budget 0 the check's least peak is the
    target, and no plan is chosen whose checked peak exceeds it (the proposals for that target can
    find a plan lower still: it is then the least reported)."""
    check = ScaledCheck(share=0.5)
    plan = _plan(0.0, check, monkeypatch)
    assert plan.predicted_peak_bytes == plan.least_bytes <= plan.target_bytes
    assert plan.predicted_peak_bytes == min(check.peaks.values())


def test_strict_mode_accepts_a_byte_budget_a_plan_other_than_the_least_peak_one_meets(monkeypatch):
    """The model's least-peak plan is not the lowest under the check: the search looks further
    before calling a byte budget infeasible."""
    low = _plan(0.0, None, monkeypatch)
    budget = int(low.predicted_peak_bytes * 0.9)
    # every plan above the model's least-peak one checks half that peak lower (whichever the pool's
    # next-lowest plan is: it once saved more values than the least one, now it saves as many)
    check = ScaledCheck(
        share=1.0,
        bonus=low.predicted_peak_bytes // 2,
        favour=lambda c: c.peak > low.predicted_peak_bytes,
    )
    plan = _plan(budget, check, monkeypatch, strict=True)
    assert plan.status != "budget-infeasible" and plan.predicted_peak_bytes <= budget
    assert plan.predicted_peak_bytes in check.peaks.values()
    assert plan.predicted_peak_bytes < low.predicted_peak_bytes


def test_strict_mode_accepts_a_byte_budget_that_only_the_checked_peaks_meet(monkeypatch):
    low = _plan(0.0, None, monkeypatch).predicted_peak_bytes
    budget = int(low * 0.9)  # below the model's least peak, above the check's (0.7 of it)
    with pytest.raises(Exception, match="strict=True"):
        _plan(budget, None, monkeypatch, strict=True)
    plan = _plan(budget, ScaledCheck(0.7), monkeypatch, strict=True)
    assert plan.status != "budget-infeasible" and plan.predicted_peak_bytes <= budget
    with pytest.raises(Exception, match="strict=True.*least peak"):
        _plan(int(low * 0.5), ScaledCheck(0.7), monkeypatch, strict=True)


def test_a_byte_budget_the_runtime_optimal_plan_meets_when_checked_needs_no_search(monkeypatch):
    high = _plan(1.0, None, monkeypatch).predicted_peak_bytes
    plan = _plan(int(high * 0.8), ScaledCheck(0.7), monkeypatch)
    assert plan.solver == "min-cut" and plan.solver_stats["checked_plans"] == 1


def test_a_failing_check_degrades_to_the_memory_model_with_a_note(monkeypatch):
    plan = _plan(0.5, ScaledCheck(fail=True), monkeypatch)
    unchecked = _plan(0.5, None, monkeypatch)
    assert plan.digest() == unchecked.digest()
    assert plan.predicted_peak_bytes == unchecked.predicted_peak_bytes
    assert plan.solver_stats["check_failed"] and plan.solver_stats["peak_model"] == "op-by-op"
    assert any("checking plans against Inductor's schedule failed" in n for n in plan.notes)


def test_a_plan_is_not_optimal_while_a_faster_pooled_plan_fits_or_may():
    """A MILP proof holds for its linearised model: when a faster pooled plan fits the target by
    its check, or was never checked but fits the model's cap, the plan is not optimal."""
    chosen, fast_fits, fast_big, slow = (
        _candidate("c", 90, 2.0),
        _candidate("f", 80, 1.0),
        _candidate("b", 200, 0.5),
        _candidate("s", 10, 3.0),
    )
    check = ScaledCheck(share=1.0)
    checked = _checked_over((chosen, fast_fits, fast_big, slow), check)
    assert checked.faster_may_fit(
        chosen, cap=100, model_cap=100
    )  # fast_fits: unchecked, within the model cap
    check.peak(fast_fits)
    assert checked.faster_may_fit(chosen, cap=100, model_cap=50)  # checked, and fits
    check.peaks[fast_fits.cut.saved] = 150
    assert not checked.faster_may_fit(chosen, cap=100, model_cap=100)  # checked above; fast_big above too


def test_below_the_least_plans_checked_peak_the_next_lowest_plans_are_checked_before_refusing():
    from autoremat.passes.search import MAX_FINALIST_CHECKS

    plans = [_candidate(str(i), 100 + i, 10.0 - i) for i in range(MAX_FINALIST_CHECKS + 2)]
    # the model's least plan checks high; only the last one checks low, beyond the allowance
    check = ScaledCheck(share=1.0, bonus=50, favour=lambda c: c is plans[-1])
    checked = _checked_over(plans, check)
    check.peak(plans[0])
    assert checked.lowest_within(cap=90) is None and check.checks == 1 + MAX_FINALIST_CHECKS
    check.favour = lambda c: c is plans[2]
    check.peaks.clear()
    check.peak(plans[0])
    assert checked.lowest_within(cap=90) is plans[2]


def _scale_fixture(peaks: dict[str, int]):
    """A runtime-optimal plan and two low plans with the checked peaks ``peaks``; a pool, a check."""
    plans = {
        "high": _candidate("high", 300, 1.0),
        "least": _candidate("least", 100, 3.0),
        "next": _candidate("next", 110, 2.0),
    }
    check = ScaledCheck(share=1.0)
    check.peak = lambda c: check.peaks.setdefault(c.cut.saved, peaks[c.cut.saved[0]])
    return plans, check, _checked_over(plans.values(), check)


def test_the_next_lowest_plan_is_checked_only_when_it_could_be_the_least():
    # the least checks at 0.7 of its model peak and the runtime-optimal at 0.9: the next plan
    # (model 110) could check at 77, above the least's 70, so it is not checked
    plans, check, checked = _scale_fixture({"high": 270, "least": 70, "next": 50})
    least, high, low = checked.scale(plans["high"])
    assert (least, high, low) == (plans["least"], 270, 70)
    assert check.known(plans["next"]) is None and check.checks == 2
    # the least checks at 1.0, the runtime-optimal at 0.7: at 0.7 the next plan could check at 77,
    # below the least's 100, so it is checked, and it is the least under the check
    plans, check, checked = _scale_fixture({"high": 210, "least": 100, "next": 90})
    least, high, low = checked.scale(plans["high"])
    assert (least, high, low) == (plans["next"], 210, 90) and check.checks == 3


PLANS_FOR_CORRECTION = (("low", 600, 5.0), ("near", 1050, 2.0), ("far", 1200, 1.0), ("sm", 1100, 9.0))


def test_when_faster_plans_miss_the_checked_target_the_cap_is_corrected_by_their_own_ratio():
    """The solver's plans for the translated cap missed, and the search settled far below the
    target. The corrected cap reads the faster miss of least model peak with its own ratio (not the
    miss closest to the target); no correction when the chosen plan nearly fills the target, when no
    faster plan missed, or when the cap would not go down."""
    from autoremat.passes.search import RECALIBRATE_HEADROOM

    # (name, model peak, predicted time): "far" is the fastest, "sm" slower than "low"
    plans = {n: _candidate(n, peak, t) for n, peak, t in PLANS_FOR_CORRECTION}
    low, near, far, slow_miss = plans.values()
    check = ScaledCheck(share=1.0)
    checked = _checked_over(plans.values(), check)
    for candidate in plans.values():
        check.peak(candidate)
    cap, span = 1000, 1000
    # "near" and "far" miss; "near" has the lower model peak, and it is read at its own ratio
    assert checked.recalibrated_cap(low, cap, span, (600, 1100)) == 1000
    check.peaks[near.cut.saved], check.peaks[far.cut.saved] = 1102, 1010
    assert checked.recalibrated_cap(low, cap, span, (600, 1100)) == int(1050 * 1000 / 1102)
    # the cap only goes down, and stays above the least plan's model peak
    assert checked.recalibrated_cap(low, cap, span, (600, 900)) is None
    assert checked.recalibrated_cap(low, cap, span, (960, 1100)) is None
    # the chosen plan leaves too little of the scale unused
    check.peaks[low.cut.saved] = cap - int(RECALIBRATE_HEADROOM * span)
    assert checked.recalibrated_cap(low, cap, span, (0, 1100)) is None
    # only a slower plan missed: nothing faster to chase
    check.peaks[low.cut.saved] = 600
    check.peaks[far.cut.saved] = check.peaks[near.cut.saved] = 900
    assert checked.recalibrated_cap(low, cap, span, (0, 1100)) is None


def test_a_correction_round_never_trades_a_fitting_plan_for_a_slower_one():
    """Regression: round one's proposal N is faster than the chosen plan B and has a lower model
    peak, so B leaves the frontier; N misses under the check, and the walk down the frontier would
    end at the slow least plan L although B still fits."""
    from autoremat.passes import search

    high, least = _candidate("R", 1000, 0.0), _candidate("L", 500, 10.0)
    miss, fits = _candidate("M", 790, 1.0), _candidate("B", 700, 5.0)
    new = _candidate("N", 690, 4.0)
    ratios = {"M": 1.1, "N": 1.17}
    check = ScaledCheck(share=1.0)
    check.peak = lambda c: check.peaks.setdefault(c.cut.saved, int(c.peak * ratios.get(c.cut.saved[0], 1.0)))
    checked = _checked_over((high, least, miss, fits), check)
    checked.ctx.stats = {}
    checked.ctx.pool.fastest_within = lambda cap: new
    check.peak(high), check.peak(least)
    checked.anchors = (least, high)
    cap = 800
    model_cap = checked.model_cap(cap)
    best = checked.fastest_within(cap, model_cap)
    assert best is fits

    class Proposer:
        name = "proposer"

        def __init__(self) -> None:
            self.proposed: list[int] = []

        def propose(self, ctx, cap_bytes: int) -> None:
            self.proposed.append(cap_bytes)
            ctx.pool.plans[new.cut.saved] = new

    chosen = Proposer()
    result = search._recalibrate(
        checked.ctx, checked, chosen, {chosen.name: True}, best, cap, 500, (least.peak, model_cap)
    )
    assert chosen.proposed and check.known(new) > cap  # the round ran, and its plan missed
    assert result is fits


def test_the_search_proposes_again_for_the_corrected_cap_and_still_fits(monkeypatch):
    """Every plan but the two anchors (the least and the runtime-optimal plan) checks a share of the
    scale above its model peak, so the plans proposed for the translated cap miss and the plan that
    fits leaves room. The MILP is asked again below that cap, at the cap a miss's own ratio gives,
    and the plan chosen fits the checked target, is no slower, and trains like eager. Which share
    makes the fastest plans miss depends on the pool the model's plans make (it moved with every
    change to the memory model), so the first of a few shares that triggers a correction is used.
    (The two tests above pin which miss a round reads and which plan it keeps.)"""
    from autoremat.passes import search
    from autoremat.passes.milp_solver import MilpSolver

    caps: list[int] = []
    propose = MilpSolver.propose

    def recording(self, ctx, cap):
        caps.append(cap)
        return propose(self, ctx, cap)

    monkeypatch.setattr(MilpSolver, "propose", recording)
    unchecked = _plan(0.25, None, monkeypatch)
    anchors = {unchecked.least_bytes, unchecked.runtime_optimal_bytes}
    span = unchecked.runtime_optimal_bytes - unchecked.least_bytes

    def planned(rounds: int, penalty: int) -> tuple[autoremat.Plan, ScaledCheck, list[int]]:
        monkeypatch.setattr(search, "RECALIBRATIONS", rounds)
        caps.clear()
        check = ScaledCheck(share=1.0, bonus=-penalty, favour=lambda c: c.peak not in anchors)
        return _plan(0.25, check, monkeypatch), check, list(caps)

    rounds = search.RECALIBRATIONS
    for penalty in (span // 10, span // 5, span // 20, span // 3):
        plan, check, corrected_caps = planned(rounds, penalty)
        if "recalibrations" in plan.solver_stats:
            break
    else:
        pytest.fail("no share of the scale made the proposals miss: the test lost its case")
    plain, _, plain_caps = planned(0, penalty)
    extra = corrected_caps[len(plain_caps) :]
    assert (
        corrected_caps[: len(plain_caps)] == plain_caps
        and len(extra) == plan.solver_stats["recalibrations"] >= 1
    )
    assert all(cap < plain_caps[0] and cap not in plain_caps for cap in extra)
    # the anchors check at their model peaks, so the target is the translated cap; the first
    # correction reads it at one miss's own ratio (its model peak over its checked peak)
    target = plan.target_bytes
    assert target == unchecked.target_bytes
    misses = [peak - penalty for peak in check.peaks.values() if peak > target and peak not in anchors]
    assert any(abs(extra[0] - model * target / (model + penalty)) <= 1 for model in misses)
    assert plan.predicted_peak_bytes <= target
    assert plan.predicted_recompute_s <= plain.predicted_recompute_s


def test_a_replayed_forward_calibrates_the_estimate_that_spares_later_forward_replays(monkeypatch):
    """InductorCheck replays a plan's forward only when the backward's checked peak is below the
    forward's estimate: the op-by-op forward peak, less the least overshoot a replay showed."""

    from autoremat.cost_models.inductor_memory import InductorStepPeak
    from autoremat.passes import inductor_check

    bounds = []

    def step_peak(fw, bw, n, patches, *, forward_bound, own_graphs):
        bounds.append(forward_bound)
        backward = 900
        if forward_bound is not None and backward >= forward_bound:
            return InductorStepPeak(backward, forward_bound, backward, 500, forward_replayed=False)
        return InductorStepPeak(max(backward, 800), 800, backward, 500)  # the forward replays at 800

    graph = SimpleNamespace(graph=SimpleNamespace(nodes=[]))
    monkeypatch.setattr(inductor_check, "split_joint_graph", lambda *a: (graph, graph))
    monkeypatch.setattr(inductor_check, "inductor_step_peak", step_peak)
    check = inductor_check.InductorCheck(None, SimpleNamespace(num_fwd_outputs=1), {})

    def plan(name: str, forward_peak: int) -> Candidate:
        return Candidate(SimpleNamespace(saved=(name,)), 2000, 1.0, "test", None, forward_peak)

    assert check.peak(plan("a", 1000)) == 900 and bounds == [1000]  # bound 1000 > 900: replayed
    assert check.forward_overshoot == 200 and check.forward_replays == 1
    assert check.peak(plan("b", 1050)) == 900 and bounds[-1] == 850  # estimate 850 <= 900: spared
    assert check.forward_replays == 1
    assert check.peak(plan("c", 1150)) == 900 and bounds[-1] == 950 and check.forward_replays == 2


def _stand_in_replays(monkeypatch, step_peak, forward_peak):
    """An InductorCheck whose replays are ``step_peak`` and ``forward_peak`` (the stand-ins of
    ``inductor_step_peak`` and ``inductor_forward_peak``), on split graphs named after the plan's
    first saved value."""
    from autoremat.passes import inductor_check

    monkeypatch.setattr(
        inductor_check,
        "split_joint_graph",
        lambda joint, analysis, saved: (SimpleNamespace(name=saved[0], graph=SimpleNamespace(nodes=[])),) * 2,
    )
    monkeypatch.setattr(inductor_check, "inductor_step_peak", step_peak)
    monkeypatch.setattr(inductor_check, "inductor_forward_peak", forward_peak)
    return inductor_check.InductorCheck(None, SimpleNamespace(num_fwd_outputs=1), {})


def test_a_plan_chosen_on_an_estimated_forward_is_confirmed_with_its_forward_replayed(monkeypatch):
    """A check may stand an estimate in for a plan's forward peak (previous test); a plan about to
    be chosen has its forward replayed (its backward's replay stands), and the search passes over one
    whose real forward misses the cap
    (quick long_context under a byte budget: estimated 1,745,156 bytes, measured 1,859,584, over the
    1,851,844-byte budget)."""
    from autoremat.cost_models.inductor_memory import InductorStepPeak

    real_forward = {"fast": 1100, "slow": 850}
    bounds = []
    forwards = []

    def step_peak(fw, bw, n, patches, *, forward_bound, own_graphs):
        bounds.append(forward_bound)
        if forward_bound is not None:  # estimated below the backward's 900: not replayed
            return InductorStepPeak(900, forward_bound, 900, 500, forward_replayed=False)
        forward = real_forward[fw.name]
        return InductorStepPeak(max(forward, 900), forward, 900, 500)

    def forward_peak(fw, patches, *, own_graphs):
        forwards.append(fw.name)
        return real_forward[fw.name]

    check = _stand_in_replays(monkeypatch, step_peak, forward_peak)
    check.forward_overshoot = 300  # learnt from an earlier replay: estimates are forward_peak - 300

    fast = Candidate(SimpleNamespace(saved=("fast",)), 1200, 1.0, "test", None, 1150)
    slow = Candidate(SimpleNamespace(saved=("slow",)), 1000, 2.0, "test", None, 1150)
    assert check.peak(fast) == 900 and check.confirm(fast) == 1100
    # the backward's replay stands: only the forward is replayed, once
    assert bounds == [850] and forwards == ["fast"] and check.phases(fast) == (1100, 900)
    assert check.confirm(fast) == 1100 and forwards == ["fast"]
    assert check.forward_replays == 1 and check.forward_overshoot == 50  # 1150 modelled, 1100 real

    checked = _checked_over([fast, slow], check)
    assert checked.fastest_within(1000, 10**9) is slow
    assert check.known(slow) == 900


def _calibrating_check(monkeypatch, real_forward: dict[str, int], backward: int = 900):
    """An InductorCheck over a stand-in replay: every plan's backward peaks at ``backward``, its
    forward at ``real_forward[name]``; ``calls`` records (plan, forward bound) per replay."""
    from autoremat.cost_models.inductor_memory import InductorStepPeak

    calls: list[tuple[str, int | None]] = []

    def step_peak(fw, bw, n, patches, *, forward_bound, own_graphs):
        calls.append((fw.name, forward_bound))
        if forward_bound is not None and backward >= forward_bound:  # inductor_step_peak's rule
            return InductorStepPeak(backward, forward_bound, backward, 500, forward_replayed=False)
        return InductorStepPeak(max(real_forward[fw.name], backward), real_forward[fw.name], backward, 500)

    def forward_peak(fw, patches, *, own_graphs):
        calls.append((fw.name, "forward"))
        return real_forward[fw.name]

    return _stand_in_replays(monkeypatch, step_peak, forward_peak), calls


def test_a_plan_measured_ahead_checks_as_if_replayed_when_asked(monkeypatch):
    """``prefetch`` measures a plan on the worker thread (its backward, and its forward apart);
    ``peak`` reads it on the forward estimate the check holds when asked, so every answer, the
    calibration, and what a confirmation learns are those of the check replaying each plan in turn
    (the first test above); a confirmation of a prefetched plan needs no replay."""
    import threading

    real_forward = {"a": 800, "b": 1000, "c": 800, "d": 1060}
    plans = [
        Candidate(SimpleNamespace(saved=(name,)), 2000, 1.0, "test", None, modelled)
        for name, modelled in (("a", 1000), ("b", 1050), ("c", 1150), ("d", 1150))
    ]
    answers = {}
    for ahead in (False, True):
        check, calls = _calibrating_check(monkeypatch, real_forward)
        got = []
        for plan in plans:
            if ahead:
                check.prefetch(plan)
            got.append((check.peak(plan), check.phases(plan), check.forward_overshoot, check.forward_replays))
        got.append((check.confirm(plans[1]), check.phases(plans[1]), check.forward_overshoot))
        check.drain()
        answers[ahead] = got
        if ahead:
            # each measured once, the backward on bound 0 and the forward apart; nothing replayed
            # on the search's thread, the confirmation included
            assert calls == [c for p in plans for c in ((p.cut.saved[0], 0), (p.cut.saved[0], "forward"))]
            assert check.prefetches == check.prefetches_used == len(plans)
        else:
            assert ("b", "forward") in calls  # the confirmation replayed b's forward
    assert answers[True] == answers[False]
    # b's forward was estimated (850 <= its backward's 900), and its confirmation found 1000
    assert answers[False][1][1] == (850, 900) and answers[False][-1][:2] == (1000, (1000, 900))
    assert not any(t.name.startswith("autoremat-check") for t in threading.enumerate())


def test_a_measurement_ahead_fails_the_check_where_a_replay_in_turn_would(monkeypatch):
    """An exception on the worker thread surfaces where the search asks (which degrades to the
    memory model, test_a_failing_check_degrades...), and only if the replay in turn would have
    raised it: a forward that fails to lower fails a check whose estimate spares the forward at its
    confirmation, not before. A failed guess nobody asks for is dropped."""
    from autoremat.passes import inductor_check

    check, _ = _calibrating_check(monkeypatch, {"a": 800})
    bad = Candidate(SimpleNamespace(saved=("missing",)), 2000, 1.0, "test", None, 1000)
    check.prefetch(bad)
    with pytest.raises(KeyError):
        check.peak(bad)  # the forward is needed (estimate 1000 above the backward's 900)

    def forward_fails(fw, patches, *, own_graphs):
        raise RuntimeError("the forward does not lower")

    monkeypatch.setattr(inductor_check, "inductor_forward_peak", forward_fails)
    check.forward_overshoot = 300  # estimates 700 below the backward's 900: forwards spared
    spared = Candidate(SimpleNamespace(saved=("a",)), 2000, 1.0, "test", None, 1000)
    check.prefetch(spared)
    assert check.peak(spared) == 900 and check.phases(spared) == (700, 900)
    with pytest.raises(RuntimeError, match="does not lower"):
        check.confirm(spared)
    unasked = Candidate(SimpleNamespace(saved=("gone",)), 2000, 1.0, "test", None, 1000)
    check.prefetch(unasked)
    check.drain()


def test_no_two_lowerings_run_at_once(monkeypatch):
    """Inductor's config patches are process-wide: a replay the search makes while a measurement
    ahead is still lowering waits for it (two lowerings at once would restore each other's patches)."""
    import threading
    import time

    from autoremat.cost_models.inductor_memory import InductorStepPeak

    active, most, order = [0], [0], []
    release = threading.Event()

    def step_peak(fw, bw, n, patches, *, forward_bound, own_graphs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        order.append(("start", fw.name))
        if fw.name == "slow":
            release.wait(timeout=10)
        time.sleep(0.01)
        order.append(("end", fw.name))
        active[0] -= 1
        return InductorStepPeak(900, 800, 900, 500)

    check = _stand_in_replays(monkeypatch, step_peak, lambda fw, patches, *, own_graphs: 800)
    slow = Candidate(SimpleNamespace(saved=("slow",)), 2000, 1.0, "test", None, 1000)
    other = Candidate(SimpleNamespace(saved=("other",)), 2000, 1.0, "test", None, 1000)
    check.prefetch(slow)
    threading.Timer(0.2, release.set).start()
    assert check.peak(other) == 900  # asked while "slow" lowers on the worker
    assert most[0] == 1 and order.index(("end", "slow")) < order.index(("start", "other"))
    assert check.peak(slow) == 900
    check.drain()


class PrefetchingCheck(ScaledCheck):
    """ScaledCheck that records what the search asks it to measure ahead, and when it drains."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple[str, object]] = []
        self.in_flight = False

    def peak(self, candidate: Candidate) -> int:
        self.events.append(("peak", candidate.cut.saved))
        return super().peak(candidate)

    def prefetch(self, candidate: Candidate) -> None:
        self.events.append(("prefetch", candidate.cut.saved))
        self.in_flight = True

    def drain(self) -> None:
        self.events.append(("drain", None))
        self.in_flight = False


def test_the_search_names_the_plans_it_will_check_before_its_solves_and_drains_before_it_ends(monkeypatch):
    """The search lets a check measure ahead (``_Checked.prefetch``): the runtime-optimal plan during
    the solve for budget 1.0's fastest plan, drained before the explorers run torch's partitioner,
    and then the first finalist for the target during the grid's solves after the target's proposal.
    The plan is the one the same check makes without measuring ahead, and nothing is in flight after."""
    from autoremat.passes.torch_knob import TorchKnobSolver

    plain = _plan(0.5, ScaledCheck(share=0.7), monkeypatch)
    check = PrefetchingCheck(share=0.7)
    explore, explored = TorchKnobSolver.explore, []

    def explore_drained(self, ctx):
        explored.append(check.in_flight)
        return explore(self, ctx)

    monkeypatch.setattr(TorchKnobSolver, "explore", explore_drained)
    plan = _plan(0.5, check, monkeypatch)
    assert explored == [False]  # torch's partitioner never runs beside a measurement
    assert plan.digest() == plain.digest() and plan.predicted_peak_bytes == plain.predicted_peak_bytes
    kinds = [kind for kind, _ in check.events]
    assert kinds[0] == "prefetch" and kinds[1] == "drain" and kinds[-1] == "drain"
    runtime_optimal = check.events[0][1]
    assert ("peak", runtime_optimal) in check.events
    # guesses for the target follow the anchors' checks, and never name a plan checked already
    asked: set = set()
    ahead = []
    for kind, saved in check.events[2:]:
        if kind == "peak":
            asked.add(saved)
        elif kind == "prefetch":
            assert saved not in asked
            ahead.append(saved)
    assert ahead and plan.solver_stats["checked_plans"] == len(asked | {runtime_optimal})
