"""One budget for the whole training step (autoremat/step.py, passes/step_allocation.py,
cost_models/optimizer_memory.py): the allocation against brute force, the options, the static
memory of an optimizer, and measured steps of a Llama-style model with AdamW, compiled per block and
whole with a graph break, on the codegen-free path (benchmarks/step_budget.py measures the same
under Inductor)."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import autoremat
from autoremat.cost_models.optimizer_memory import static_memory
from autoremat.passes.step_allocation import StepOption, allocate, fastest, frontier, step_activation_peak
from benchmarks.step_budget import Size, run
from tests.harness import EAGER_TOL

#: largest relative gradient error against eager (the codegen-free path runs eager kernels)
GRAD_TOL = EAGER_TOL["rtol"]

#: small enough for CI, still activation-dominated (activations ~10x the weights, grads and state)
SMALL = Size(seq=128, batch=8)


def _option(end: int, peak: int, time_s: float, name: str = "") -> StepOption:
    return StepOption((name,), end, peak, time_s)


def _phased(end: int, forward: int, backward: int, time_s: float, releasable: int) -> StepOption:
    return StepOption(("",), end, max(forward, backward), time_s, False, forward, backward, releasable)


options_st = st.lists(
    st.builds(
        _phased,
        st.integers(0, 50),
        st.integers(1, 100),
        st.integers(1, 100),
        st.floats(0.0, 10.0, allow_nan=False).map(lambda t: round(t, 2)),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def steps(draw):
    frontiers = draw(st.lists(options_st, min_size=1, max_size=3))
    extra_calls = draw(st.lists(st.integers(0, len(frontiers) - 1), max_size=3))
    sequence = draw(st.permutations([*range(len(frontiers)), *extra_calls]))
    extra = draw(st.lists(st.integers(0, 20), min_size=len(sequence), max_size=len(sequence)))
    released = draw(st.lists(st.integers(0, 40), min_size=len(sequence), max_size=len(sequence)))
    cap = draw(st.integers(0, 400))
    return frontiers, list(sequence), extra, released, cap


@settings(max_examples=150, deadline=None)
@given(steps())
def test_the_allocation_is_the_brute_force_optimum(step):
    frontiers, sequence, extra, released, cap = step
    runs = [sequence.count(r) for r in range(len(frontiers))]
    choices = list(itertools.product(*(range(len(f)) for f in frontiers)))
    peak = {c: _brute_peak(frontiers, sequence, c, extra, released) for c in choices}
    time = {c: sum(frontiers[r][c[r]].time_s * runs[r] for r in range(len(frontiers))) for c in choices}
    least = allocate(frontiers, sequence, None, extra, released)
    assert least.activation_peak_bytes == min(peak.values())
    got = allocate(frontiers, sequence, cap, extra, released)
    fitting = [c for c in choices if peak[c] <= cap]
    if not fitting:
        assert got.status == "infeasible" and got.activation_peak_bytes == min(peak.values())
        lowest = [c for c in choices if peak[c] == min(peak.values())]
        assert got.time_s == pytest.approx(min(time[c] for c in lowest), abs=1e-9)
    else:
        assert got.status in ("optimal", "feasible") and got.activation_peak_bytes <= cap
        assert got.time_s == pytest.approx(min(time[c] for c in fitting), abs=1e-9)
    assert fastest(frontiers, sequence, extra, released).time_s == pytest.approx(min(time.values()), abs=1e-9)
    assert step_activation_peak(frontiers, sequence, got.choice, extra, released) == peak[got.choice]


def _brute_peak(frontiers, sequence, choice, extra, released) -> int:
    """The step formula written out: while call k runs, the calls before it hold their end bytes;
    its backward no longer holds the outputs later calls released (those it does not save)."""
    worst = 0
    for k, region in enumerate(sequence):
        option = frontiers[region][choice[region]]
        held = sum(frontiers[r][choice[r]].end_bytes for r in sequence[:k])
        backward = option.backward_peak_bytes - min(released[k], option.releasable_bytes)
        worst = max(worst, held + extra[k] + max(option.forward_peak_bytes, backward))
    return worst


def test_the_frontier_keeps_only_undominated_plans():
    a, b, c, d = (
        _option(10, 50, 1.0, "a"),
        _option(5, 50, 2.0, "b"),
        _option(10, 60, 2.0, "c"),
        _option(5, 40, 3.0, "d"),
    )
    assert frontier([a, b, c, d]) == [a, b, d]  # c is beaten by a on every count


def test_step_budget_options_parse_validate_and_exclude_memory_budget(monkeypatch):
    assert autoremat.resolve_options({"step_budget": "2GiB"}).step_budget.value == 2 * 2**30
    assert autoremat.resolve_options({"step_budget": "auto"}).step_budget.kind == "auto"
    assert autoremat.resolve_options({"step_budget": 0.5}).step_budget.kind == "fraction"
    with pytest.raises(ValueError, match="step_budget='lots'.*invalid"):
        autoremat.resolve_options({"step_budget": "lots"})
    with pytest.raises(ValueError, match="step_budget=.*memory_budget=.*pass one of them"):
        autoremat.resolve_options({"step_budget": "1GiB", "memory_budget": 0.5})
    monkeypatch.setenv("AUTOREMAT_STEP_BUDGET", "3GiB")
    assert autoremat.resolve_options().step_budget.value == 3 * 2**30
    with pytest.raises(ValueError, match="step_budget"):
        autoremat.resolve_options({"memory_budget": 0.5})
    monkeypatch.setenv("AUTOREMAT_STEP_BUDGET", "-1")
    with pytest.raises(ValueError, match="AUTOREMAT_STEP_BUDGET"):
        autoremat.resolve_options()


def test_static_memory_counts_parameters_gradients_and_adamw_moments():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    static = static_memory([optimizer])
    params = sum(p.numel() * 4 for p in model.parameters())
    assert static.parameters == static.gradients == params
    # two moments per parameter, plus a 4-byte step counter each
    assert static.optimizer_state == 2 * params + 4 * 4
    # single-tensor AdamW: two temporaries the size of the largest parameter
    assert static.optimizer_scratch == 2 * 64 * 32 * 4


def _grid(setup: str) -> list:
    probe = run(setup, {"step_budget": 0.5, "compiler": "eager"}, SMALL)
    least, high = probe.least_bytes, probe.runtime_optimal_bytes
    assert least < high
    return [
        run(setup, {"step_budget": int(least + f * (high - least)), "compiler": "eager"}, SMALL)
        for f in (0.25, 0.5, 0.75)
    ]


def test_per_block_compiled_steps_stay_within_the_step_budget():
    """One compiled graph runs once per block, the head is another: the measured step peak, from
    before the forward to after AdamW's step, stays within 2% of three budgets between the least and
    the runtime-optimal step peak; looser budgets recompute less; gradients match eager."""
    runs = _grid("per-block")
    for got in runs:
        assert got.status == "within-budget"
        assert got.measured_bytes <= got.cap_bytes * 1.02, got
        assert got.max_grad_error <= GRAD_TOL
    times = [got.predicted_recompute_ms for got in runs]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]


def test_a_model_compiled_whole_with_a_graph_break_stays_within_the_step_budget():
    probe = run("graph-break", {"step_budget": 0.5, "compiler": "eager"}, SMALL)
    plan = autoremat.step_plans()[-1]
    assert [c.runs for c in plan.regions] == [1, 1]  # the two halves, each once
    assert probe.measured_bytes <= probe.cap_bytes * 1.02
    assert probe.max_grad_error <= GRAD_TOL


def test_an_infeasible_step_budget_names_the_least_step_peak_and_its_parts(caplog):
    probe = run("per-block", {"step_budget": 0.0, "compiler": "eager"}, SMALL)
    budget = int(probe.least_bytes * 0.8)
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        got = run("per-block", {"step_budget": budget, "compiler": "eager"}, SMALL)
    assert got.status == "budget-infeasible"
    assert f"least step peak the plans allow: {probe.least_bytes}" in caplog.text
    assert "optimizer state" in caplog.text and "using the least-memory plans" in caplog.text
    with pytest.raises(autoremat.StepBudgetInfeasible, match="strict=True.*least step peak.*gradients"):
        run("per-block", {"step_budget": budget, "compiler": "eager", "strict": True}, SMALL)


def test_chosen_plans_are_checked_and_the_step_allocated_again_on_their_checked_peaks():
    """Under Inductor most frontier peaks are estimates: the options a step plan chooses are checked
    and, where a check finds more than the estimate, the allocation is made again on it."""
    from types import SimpleNamespace

    from autoremat.step import StepPlanner

    fast = StepOption(("fast",), 10, 60, 1.0)  # estimated 60, checks at 90
    slow = StepOption(("slow",), 10, 70, 2.0, checked=True)
    calls = []

    def check(option):
        calls.append(option.saved)
        return StepOption(option.saved, option.end_bytes, 90, option.time_s, True)

    planner = object.__new__(StepPlanner)
    planner.regions = [SimpleNamespace(check=check)]
    frontiers = [[fast, slow]]
    allocation = planner._allocate_checked([0], frontiers, [0], 80, [0], [0])
    assert calls == [("fast",)] and allocation.choice == (1,)
    assert frontiers[0][0].checked and frontiers[0][0].peak_bytes == 90


def test_a_training_loop_without_an_optimizer_is_planned_after_waiting_and_says_so():
    from autoremat.step import PATIENCE

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    compiled = torch.compile(model, backend=autoremat.backend(step_budget="1GiB", compiler="eager"))
    before = len(autoremat.step_plans())
    for _ in range(PATIENCE + 2):
        compiled(torch.randn(8, 32)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
    (plan,) = autoremat.step_plans()[before:]
    assert plan.status == "within-budget" and plan.static.optimizer_state == 0
    assert any("no optimizer step was seen" in note for note in plan.notes)


def test_auto_is_what_the_device_can_give_the_step(monkeypatch):
    """ "auto" = the device's available memory (as ``memory_budget="auto"`` reads it) plus what the
    step holds of it already: here parameters and AdamW's state."""
    import autoremat.step as step_module

    monkeypatch.setattr(step_module, "available_bytes", lambda device: 10**9)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    compiled = torch.compile(model, backend=autoremat.backend(step_budget="auto", compiler="eager"))
    optimizer = torch.optim.AdamW(model.parameters())
    before = len(autoremat.step_plans())
    for _ in range(2):
        compiled(torch.randn(8, 32)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    (plan,) = autoremat.step_plans()[before:]
    params = sum(p.numel() * 4 for p in model.parameters())
    assert plan.cap_bytes == 10**9 + params + plan.static.optimizer_state
    assert plan.status == "within-budget" and plan.static.parameters == params


@settings(max_examples=100, deadline=None)
@given(options_st, st.integers(0, 40))
def test_the_frontier_loses_no_allocation(options, released):
    """Filtering a graph's options to its frontier never makes a step's best choice worse."""
    kept = frontier(options)
    for cap in (None, 60, 120):
        full = allocate([options], [0, 0], cap, [0, 5], [released, 0])
        reduced = allocate([kept], [0, 0], cap, [0, 5], [released, 0])
        assert reduced.status == full.status
        assert reduced.activation_peak_bytes == full.activation_peak_bytes or cap is not None
        assert reduced.time_s == pytest.approx(full.time_s, abs=1e-9) or cap is None
