"""The recompute-work counter (benchmarks/recompute_work.py) measures plans, not noise.

Codegen-free only and smoke-sized, so it runs in seconds; no timing is asserted.
"""

from __future__ import annotations

import pytest

from benchmarks.recompute_work import Work, measure_step_work, recompute_work

#: the smallest suite model with attention, norms and matmuls to recompute
MODEL, PROFILE = "gpt2", "smoke"


@pytest.fixture(scope="module")
def reference():
    return measure_step_work(MODEL, PROFILE, "no_recompute", 1.0)


def test_counts_are_deterministic(reference):
    again = measure_step_work(MODEL, PROFILE, "no_recompute", 1.0)
    assert again.work == reference.work
    assert reference.work.flops > 0 and reference.work.bytes > 0 and reference.work.ops > 0


def test_no_recompute_plan_recomputes_nothing(reference):
    extra, step = recompute_work(MODEL, PROFILE, "no_recompute", 1.0)
    assert extra == Work(0, 0, 0)
    assert step.work == reference.work


def test_tighter_autoremat_budget_recomputes_at_least_as_much(reference):
    loose = measure_step_work(MODEL, PROFILE, "autoremat", 1.0)
    tight = measure_step_work(MODEL, PROFILE, "autoremat", 0.0)
    loose_extra, tight_extra = loose.work - reference.work, tight.work - reference.work
    # Budget 1.0 is the runtime-optimal plan: it may recompute cheap elementwise ops (bytes), never a
    # matmul the reference ran once.
    assert loose_extra.flops == 0 and loose_extra.bytes >= 0
    assert tight_extra.flops >= loose_extra.flops
    assert tight.predicted_recompute_s >= loose.predicted_recompute_s > 0
