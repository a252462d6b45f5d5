"""DESIGN §3 contracts on the codegen-free path: randomness, user tags, mutations, symbolic shapes,
mixed precision, graph breaks, inference, cache identity and failure fallback."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import autoremat
from autoremat import partitioner as partitioner_module
from autoremat.graph.op_classes import OpClass, classify
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner
from tests.harness import (
    BF16_TOL,
    EAGER_TOL,
    assert_small_step_matches_eager,
    assert_steps_match,
    capture_joint,
    compiled_step,
    train_step,
)
from tests.models import MLP, ConvNet, DropoutProbe, Transformer, check_dropout_mask_consistent


def eager_backend(budget=1.0, **kw):
    return autoremat.backend(compiler="eager", memory_budget=budget, **kw)


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.0, 4096])
def test_dropout_backward_uses_forward_mask(budget):
    torch.manual_seed(0)
    model = DropoutProbe().train()
    compiled = torch.compile(model, backend=eager_backend(budget))
    check_dropout_mask_consistent(model, compiled, torch.randn(8, 16, requires_grad=True))
    assert autoremat.recent_plans()


def test_must_recompute_tag_on_random_op_saves_instead():
    torch.manual_seed(0)
    model = DropoutProbe().train()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_RECOMPUTE

    def fn(x):
        ctx = functools.partial(create_selective_checkpoint_contexts, policy)
        return checkpoint(model, x, use_reentrant=False, context_fn=ctx)

    check_dropout_mask_consistent(model, torch.compile(fn, backend=eager_backend()), torch.randn(8, 16))
    notes = [n for p in autoremat.recent_plans() for n in p.notes]
    assert any("recompute tag ignored (random op)" in n for n in notes), notes


@pytest.mark.parametrize("tag", [CheckpointPolicy.MUST_SAVE, CheckpointPolicy.MUST_RECOMPUTE])
def test_selective_checkpoint_tags_on_matmul_are_honoured(tag):
    torch.manual_seed(0)
    model = MLP(d=16, depth=2)

    def policy(ctx, op, *args, **kwargs):
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            return tag
        return CheckpointPolicy.PREFER_RECOMPUTE

    def fn(x):
        ctx = functools.partial(create_selective_checkpoint_contexts, policy)
        return checkpoint(model, x, use_reentrant=False, context_fn=ctx)

    x = torch.randn(4, 16, requires_grad=True)
    got = train_step(model, torch.compile(fn, backend=eager_backend(), fullgraph=True), (x,))
    assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    saved_ops = {s.op for s in plan.saved}
    recomputed_mm = [r for r in plan.recomputed if r.op.startswith(("addmm", "mm"))]
    if tag == CheckpointPolicy.MUST_SAVE:
        assert "addmm.default" in saved_ops and not recomputed_mm
    else:
        assert recomputed_mm and "addmm.default" not in saved_ops


def test_batchnorm_running_stats_and_grads_match_eager():
    torch.manual_seed(0)
    eager_model, model = ConvNet().train(), ConvNet().train()
    model.load_state_dict(eager_model.state_dict())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    expected = train_step(eager_model, eager_model, (x,))
    got = compiled_step(model, eager_backend(0.0), (x,))
    assert_steps_match(got, expected, EAGER_TOL)
    for name, buf in eager_model.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buf, msg=name)


def test_dynamic_shapes_one_graph_two_sizes():
    torch.manual_seed(0)
    model = Transformer(d=16, layers=1)
    compiled = torch.compile(model, backend=eager_backend(0.5), dynamic=True)
    for batch, seq in ((2, 5), (3, 7)):
        x = torch.randn(batch, seq, 16, requires_grad=True)
        assert_steps_match(train_step(model, compiled, (x,)), train_step(model, model, (x,)), EAGER_TOL)
    plans = autoremat.recent_plans()
    assert len(plans) == 1, "the second shape should reuse the symbolic graph"
    assert any(not s.isdigit() for v in plans[0].saved for s in v.shape), "expected symbolic sizes"


def test_bf16_autocast_grads_match_eager_autocast():
    torch.manual_seed(0)
    model = Transformer(d=16, layers=1)
    x = torch.randn(2, 6, 16, requires_grad=True)

    def autocast(m):
        def run(inp):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(inp)

        return run

    expected = train_step(model, autocast(model), (x,))
    got = train_step(model, autocast(torch.compile(model, backend=eager_backend(0.5))), (x,))
    assert_steps_match(got, expected, BF16_TOL)
    assert any(v.dtype == "bfloat16" for p in autoremat.recent_plans() for v in p.saved)


def test_graph_break_gives_one_plan_per_graph():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            y = torch.relu(self.a(x))
            torch._dynamo.graph_break()
            return torch.tanh(self.b(y)).sum()

    model = Broken()
    x = torch.randn(3, 8, requires_grad=True)
    got = compiled_step(model, eager_backend(), (x,))
    assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
    assert len(autoremat.recent_plans()) == 2


def test_inference_graphs_never_reach_the_partitioner():
    model = MLP(d=8)
    compiled = torch.compile(model, backend=eager_backend())
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert autoremat.recent_plans() == []


def test_uuid_changes_with_options_and_is_stable():
    a = RematPartitioner(resolve_options({"memory_budget": 0.5}))
    b = RematPartitioner(resolve_options({"memory_budget": 0.5}))
    c = RematPartitioner(resolve_options({"memory_budget": 0.6}))
    assert a.uuid() == b.uuid() != c.uuid()


def test_internal_failure_falls_back_with_a_warning(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("injected solver bug")

    monkeypatch.setattr(partitioner_module, "solve_min_cut", broken)
    assert_small_step_matches_eager(eager_backend(), caplog)
    (plan,) = autoremat.recent_plans()
    assert plan.status == "fallback" and "injected solver bug" in plan.notes[0]
    assert "falling back to torch's min-cut" in caplog.text


def test_infeasible_byte_budget_warns_or_raises_in_strict_mode(caplog):
    # A dropout mask can be neither recomputed nor dropped, so a 2-byte cap cannot be met.
    torch.manual_seed(0)
    model = DropoutProbe().train()
    x = torch.randn(8, 16)
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        check_dropout_mask_consistent(model, torch.compile(model, backend=eager_backend(2)), x)
    (plan,) = autoremat.recent_plans()
    assert plan.status == "budget-infeasible" and plan.least_bytes > 2
    assert plan.predicted_peak_bytes == plan.least_bytes
    assert "below the least peak activation memory" in caplog.text and str(plan.least_bytes) in caplog.text

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=eager_backend(2, strict=True))
    with pytest.raises(Exception, match="strict=True"):
        compiled(x).sum().backward()


def test_feasible_byte_budget_caps_the_predicted_peak():
    torch.manual_seed(0)
    model = Transformer(d=16, layers=2)
    x = torch.randn(4, 32, 16, requires_grad=True)
    compiled_step(model, eager_backend(), (x,))
    (high,) = autoremat.recent_plans()
    autoremat.clear_plans()
    compiled_step(model, eager_backend(0.0), (x,))
    (low,) = autoremat.recent_plans()
    assert low.predicted_peak_bytes < high.predicted_peak_bytes
    cap = (low.predicted_peak_bytes + high.predicted_peak_bytes) // 2
    autoremat.clear_plans()
    got = compiled_step(model, eager_backend(cap), (x,))
    assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    assert plan.status in ("optimal", "within-budget")
    assert plan.predicted_peak_bytes <= cap < high.predicted_peak_bytes and plan.target_bytes == cap


def _collectives(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and classify(n) is OpClass.COLLECTIVE]


@pytest.mark.parametrize("tagged", [False, True])
def test_collectives_are_never_recomputed_unless_tagged(fake_pg, tagged):
    """At budget 0.0 the backward reads an all-reduced value. Its collective is not recomputed: the
    backward issues only its own all-reduce of the gradient, unless the user tagged the forward's
    collective MUST_RECOMPUTE; then it is never saved, and a plan that recomputes it issues it again
    in the backward."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    w = torch.randn(8, 8, requires_grad=True)

    def fn(x):
        return torch.sin(funcol.all_reduce(x @ w, "sum", dist.group.WORLD)).sum()

    joint = capture_joint(fn, torch.randn(4, 8, requires_grad=True))
    gm = joint.fresh_copy()
    # the forward's all_reduce and its wait, then the backward's all_reduce of the gradient and its wait
    collectives = _collectives(gm.graph)
    ops = [str(n.target) for n in collectives]
    assert len(ops) == 4 and "all_reduce" in ops[0] and "wait_tensor" in ops[1], ops
    forward_names = {n.name for n in collectives[:2]}
    if tagged:
        for node in collectives[:2]:
            node.meta["recompute"] = CheckpointPolicy.MUST_RECOMPUTE
    ours = RematPartitioner(resolve_options({"compiler": "eager", "memory_budget": 0.0}))
    fw, bw = ours(
        gm,
        joint.joint_inputs,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )
    (plan,) = autoremat.recent_plans()
    assert plan.status != "fallback", plan.notes
    recomputed = {r.name for r in plan.recomputed} & forward_names
    assert [str(n.target) for n in _collectives(fw.graph)] == ops[:2]
    if tagged:
        # never saved; recomputed (and issued again by the backward) where the backward needs it: a
        # plan may instead save what the backward reads of it (here sin's derivative, cos: the same
        # peak with no collective recomputed, the plan budget 1.0's MILP solve finds)
        assert not {s.name for s in plan.saved} & forward_names
        expected = ops[:2] + ops[2:] if recomputed else ops[2:]
        assert recomputed in (forward_names, set()), plan.recomputed
        assert [str(n.target) for n in _collectives(bw.graph)] == expected
        if not recomputed:
            assert "cos" in {s.name for s in plan.saved}
    else:
        assert recomputed == set(), plan.recomputed
        assert [str(n.target) for n in _collectives(bw.graph)] == ops[2:]


@pytest.mark.parametrize("process_froze", [False, True])
@pytest.mark.parametrize("fails", [False, True])
def test_partition_leaves_the_garbage_collector_as_it_found_it(monkeypatch, process_froze, fails):
    """The partition freezes the objects older than it (full collections over the whole process cost
    seconds on deep models), unfreezes them on every way out, and leaves alone a process that froze
    objects itself (unfreezing would undo its ``gc.freeze`` before forking)."""
    import gc

    w = torch.randn(8, 8, requires_grad=True)
    joint = capture_joint(lambda x: torch.tanh(x @ w).sum(), torch.randn(4, 8, requires_grad=True))
    calls: list[str] = []
    during: list[int] = []
    freeze, unfreeze, original = gc.freeze, gc.unfreeze, RematPartitioner._partition

    def watched(self, *args):
        during.append(gc.get_freeze_count())
        if fails:
            raise RuntimeError("a bug of ours")
        return original(self, *args)

    if process_froze:
        freeze()
    monkeypatch.setattr(gc, "freeze", lambda: (calls.append("freeze"), freeze())[1])
    monkeypatch.setattr(gc, "unfreeze", lambda: (calls.append("unfreeze"), unfreeze())[1])
    monkeypatch.setattr(RematPartitioner, "_partition", watched)
    try:
        RematPartitioner(resolve_options({"compiler": "eager", "memory_budget": 0.5}))(
            joint.fresh_copy(),
            joint.joint_inputs,
            num_fwd_outputs=joint.num_fwd_outputs,
            static_lifetime_input_indices=joint.static_lifetime_input_indices,
        )
        after = gc.get_freeze_count()
    finally:
        unfreeze()
    if process_froze:
        assert calls == [] and after > 0
    else:
        assert calls == ["freeze", "unfreeze"] and during[0] > 0 and after == 0
    (plan,) = autoremat.recent_plans()
    assert (plan.status == "fallback") == fails
