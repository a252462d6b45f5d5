"""Distributed training: collectives in joint graphs, rank-identical decisions, budgets per region.

Single-process tests use torch's fake process group (world size 2, no communication) with DTensor
tensor parallelism, which puts real ``_c10d_functional`` collectives into the joint graphs. The
two-process test runs ``examples/fsdp2_tp.py`` under ``torchrun`` with gloo and compares it with a
single-process eager run of the same model.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import autoremat
from autoremat import _torch_compat as compat
from autoremat.backend import codegen_free_backend
from autoremat.graph.op_classes import OpClass, classify
from autoremat.options import resolve_options
from autoremat.partitioner import RematPartitioner
from autoremat.passes.collectives import collective_sequence
from autoremat.plan import Plan, RecomputedOp, SavedValue
from tests.harness import EAGER_TOL, assert_steps_match, capture_joint, train_step
from tests.models import Transformer

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fsdp2_tp.py"

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


class TPMLP(nn.Module):
    """Two Megatron MLPs (column-wise up, row-wise down); silu after each so the backward reads the
    all-reduced activation."""

    def __init__(self, d: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.up1, self.down1 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.up2, self.down2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.down1(torch.relu(self.up1(x))))
        return F.silu(self.down2(torch.relu(self.up2(x)))).square().mean()


def _tensor_parallel_mlp() -> TPMLP:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    model = TPMLP()
    plan = {"up1": ColwiseParallel(), "down1": RowwiseParallel()}
    plan.update({"up2": ColwiseParallel(), "down2": RowwiseParallel()})
    return parallelize_module(model, init_device_mesh("cpu", (2,)), plan)


def _partition(partitioner, joint):
    return partitioner(
        joint.fresh_copy(),
        joint.joint_inputs,
        num_fwd_outputs=joint.num_fwd_outputs,
        static_lifetime_input_indices=joint.static_lifetime_input_indices,
    )


def _storage_root(node: fx.Node) -> fx.Node:
    while classify(node) is OpClass.VIEW:
        node = node.args[0]
    return node


def _saved_nodes(fw: fx.GraphModule, num_fwd_outputs: int) -> list[fx.Node]:
    output = next(n for n in reversed(fw.graph.nodes) if n.op == "output")
    return [n for n in output.args[0][num_fwd_outputs:] if isinstance(n, fx.Node)]


def _wait(name: str) -> bool:
    return name.split(":", 1)[1].startswith("_c10d_functional.wait_tensor")


@pytest.mark.parametrize("budget", [1.0, 0.0, 600])
def test_tensor_parallel_collectives_are_saved_kept_and_in_order(fake_pg, budget):
    joint = capture_joint(_tensor_parallel_mlp(), torch.randn(4, 16, requires_grad=True))
    in_joint = collective_sequence(joint.gm.graph)
    ops = {c.split(":", 1)[1] for c in in_joint}
    assert {"_c10d_functional.all_reduce.default", "_c10d_functional.wait_tensor.default"} <= ops

    ours = RematPartitioner(resolve_options({"compiler": "eager", "memory_budget": budget}))
    fw, bw = _partition(ours, joint)
    ref_fw, ref_bw = _partition(compat.torch_default_partition, joint)
    (plan,) = autoremat.recent_plans()
    assert plan.status != "fallback", plan.notes

    # Same collectives, same order as the no-recompute reference; each joint collective exactly once.
    fw_seq, bw_seq = collective_sequence(fw.graph), collective_sequence(bw.graph)
    assert fw_seq == collective_sequence(ref_fw.graph) and len(fw_seq) == 4
    assert bw_seq == collective_sequence(ref_bw.graph)
    assert fw_seq + bw_seq == in_joint
    assert not {n.name for n in fw.graph.nodes} & {c.split(":")[0] for c in bw_seq}
    assert not [r for r in plan.recomputed if "c10d" in r.op]

    # What the backward reads of the all-reduced activations is saved after the wait: never an
    # un-waited collective output (the backward would read a buffer still being reduced). It may be
    # the waited values themselves or what the backward computes from them (the budget-1.0 MILP
    # solve found plans saving the activations' derivatives instead, with no more peak and less time).
    roots = {_storage_root(n).name for n in _saved_nodes(fw, joint.num_fwd_outputs)}
    unwaited = {c.split(":")[0] for c in fw_seq if not _wait(c)}
    assert not unwaited & roots, (unwaited, roots)
    assert roots - {n.name for n in fw.graph.find_nodes(op="placeholder")}, "nothing saved"


def test_tensor_parallel_step_matches_eager_and_recomputes_no_collective(fake_pg):
    model = _tensor_parallel_mlp()
    x = torch.randn(4, 16, requires_grad=True)
    expected = train_step(model, model, (x,))
    compiled = torch.compile(model, backend=autoremat.backend(compiler="eager", memory_budget=0.0))
    assert_steps_match(train_step(model, compiled, (x,)), expected, EAGER_TOL)
    (plan,) = autoremat.recent_plans()
    assert plan.status != "fallback" and plan.recomputed
    assert not [r for r in plan.recomputed if "c10d" in r.op]


class _SavesAllReduce(torch.autograd.Function):
    """Issues an all_reduce in forward whose result only the backward reads."""

    @staticmethod
    def forward(ctx, x):
        total = funcol.all_reduce(x.sum(dim=0), "sum", dist.group.WORLD)
        ctx.save_for_backward(total)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (total,) = ctx.saved_tensors
        return grad * total


def _capture_partitioned(fn, *inputs, budget=1.0):
    """Compile ``fn`` (codegen-free) and return (joint graph collectives, fw graph, bw graph)."""
    captured = {}
    ours = RematPartitioner(resolve_options({"compiler": "eager", "memory_budget": budget}))

    def partition(gm, joint_inputs, **kwargs):
        captured["joint"] = collective_sequence(gm.graph)
        captured["fw"], captured["bw"] = ours(gm, joint_inputs, **kwargs)
        return captured["fw"], captured["bw"]

    torch.compile(fn, backend=codegen_free_backend(partition), fullgraph=True)(*inputs).backward()
    return captured["joint"], captured["fw"].graph, captured["bw"].graph


@pytest.mark.parametrize("budget", [1.0, 0.0])
def test_forward_collective_read_only_by_backward_is_saved_not_repeated(fake_pg, budget):
    # Regression: such a collective was not counted as forward, so the cut moved it into the backward
    # while the forward still ran it (its dead wait survives DCE): two all_reduces instead of one.
    w = torch.randn(8, 8, requires_grad=True)
    joint, fw, bw = _capture_partitioned(
        lambda x: torch.tanh(_SavesAllReduce.apply(x @ w)).sum(), torch.randn(4, 8), budget=budget
    )
    assert collective_sequence(fw) == joint and len(joint) == 2
    assert collective_sequence(bw) == []
    saved = [n.name for n in bw.nodes if n.op == "placeholder"]
    assert joint[1].split(":")[0] in saved  # the wait_tensor's value


def test_dead_collective_survives_dce_without_funcol_registration(fake_pg, monkeypatch):
    # Regression: FX only treats wait_tensor as side-effectful once torch.distributed's functional
    # collectives module has registered it; without that, our DCE deleted an unused all_reduce + wait.
    def fn(x):
        funcol.all_reduce(x * 3, "sum", dist.group.WORLD)  # result unused, still issued by eager
        return torch.sin(x).sum()

    joint = capture_joint(fn, torch.randn(4, requires_grad=True))
    in_joint = collective_sequence(joint.gm.graph)
    assert [c.split(":", 1)[1] for c in in_joint] == [
        "_c10d_functional.all_reduce.default",
        "_c10d_functional.wait_tensor.default",
    ]
    unregistered = {f for f in torch.fx.node._side_effectful_functions if "wait_tensor" not in str(f)}
    monkeypatch.setattr(torch.fx.node, "_side_effectful_functions", unregistered)
    fw, bw = _partition(RematPartitioner(resolve_options({"compiler": "eager"})), joint)
    assert collective_sequence(fw.graph) == in_joint and collective_sequence(bw.graph) == []


def test_identical_collectives_are_not_merged_by_cse(fake_pg):
    # Regression: torch's CSE folded two identical all_reduce(x) calls into one.
    def fn(x):
        y = funcol.all_reduce(x, "sum", dist.group.WORLD)
        z = funcol.all_reduce(x, "sum", dist.group.WORLD)
        return (torch.sin(y) * z).sum()

    joint, fw, bw = _capture_partitioned(fn, torch.randn(4, requires_grad=True))
    assert len([c for c in joint if "all_reduce" in c]) == 4  # two forward, two backward
    assert collective_sequence(fw) + collective_sequence(bw) == joint


def test_calibration_is_disabled_under_distributed(fake_pg, monkeypatch, caplog):
    from autoremat import distributed

    def no_measuring(device=None):
        raise AssertionError("calibration must not run when several ranks plan")

    monkeypatch.setattr(distributed, "calibrate", no_measuring)
    monkeypatch.setattr(distributed, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="autoremat"):
        partitioner = RematPartitioner(resolve_options({"calibrate": True}), torch.device("cpu"))
        RematPartitioner(resolve_options({"calibrate": True}), torch.device("cpu"))
    assert partitioner.calibration is None
    assert caplog.text.count("calibrate=True ignored under torch.distributed (world size 2)") == 1

    model = Transformer(d=16, layers=1)
    compiled = torch.compile(model, backend=autoremat.backend(compiler="eager", calibrate=True))
    train_step(model, compiled, (torch.randn(2, 4, 16, requires_grad=True),))
    (plan,) = autoremat.recent_plans()
    assert any("calibrate=True ignored" in note for note in plan.notes), plan.notes


def _plan(**changes) -> Plan:
    fields = dict(
        budget="0.5",
        solver="min-cut",
        status="optimal",
        saved=[SavedValue("mm", "mm.default", ("4", "4"), "float32", 64)],
        saved_bytes=64,
        recomputed=[RecomputedOp("relu", "relu.default", 1e-6)],
        num_joint_nodes=10,
        partition_seconds=0.1,
    )
    fields.update(changes)
    return Plan(**fields)


def test_plan_digest_covers_decisions_only():
    base = _plan().digest()
    assert len(base) == 64 and base == _plan().digest()
    same = [
        _plan(partition_seconds=9.0),
        _plan(from_cache=True),
        _plan(notes=["rank-local note"]),
        _plan(predicted_recompute_s=3.0, graph_key="abc"),
        _plan(recomputed=[RecomputedOp("relu", "relu.default", 5e-3)]),
    ]
    assert all(p.digest() == base for p in same)
    different = [
        _plan(budget="0.4"),
        _plan(solver="greedy"),
        _plan(status="budget-infeasible"),
        _plan(saved=[SavedValue("mm", "mm.default", ("4", "4"), "float32", 32)]),
        _plan(saved=[SavedValue("addmm", "mm.default", ("4", "4"), "float32", 64)]),
        _plan(saved_bytes=65),
        _plan(recomputed=[]),
    ]
    assert len({p.digest() for p in different} | {base}) == len(different) + 1


def test_env_memory_budget_configures_backend_by_name(monkeypatch):
    # torchtitan's --compile.backend autoremat passes only the name: the environment configures it.
    monkeypatch.setenv("AUTOREMAT_COMPILER", "eager")
    model = Transformer(d=16, layers=1)
    x = torch.randn(2, 8, 16, requires_grad=True)
    budgets = {}
    for text in ("1.0", "0.0", "1GiB"):
        monkeypatch.setenv("AUTOREMAT_MEMORY_BUDGET", text)
        torch._dynamo.reset()
        autoremat.clear_plans()
        got = train_step(model, torch.compile(model, backend="autoremat"), (x,))
        assert_steps_match(got, train_step(model, model, (x,)), EAGER_TOL)
        (budgets[text],) = autoremat.recent_plans()
    assert [budgets[t].budget for t in budgets] == ["1", "0", f"{2**30} bytes"]
    assert budgets["0.0"].predicted_peak_bytes <= budgets["1.0"].predicted_peak_bytes
    assert budgets["0.0"].target_bytes == budgets["0.0"].least_bytes
    assert budgets["1GiB"].target_bytes == 2**30 and budgets["1GiB"].solver == "min-cut"


def test_byte_budget_applies_to_each_compiled_region():
    # Per-block compile: each block's joint graph gets the whole cap (on its own predicted peak).
    torch.manual_seed(0)
    model = Transformer(d=16, layers=2)
    x = torch.randn(4, 32, 16, requires_grad=True)
    expected = train_step(model, model, (x,))

    def per_block_plans(budget):
        blocks = copy.deepcopy(model)
        for index, block in enumerate(blocks.blocks):
            blocks.blocks[index] = torch.compile(
                block, backend=autoremat.backend(compiler="eager", memory_budget=budget)
            )
        torch._dynamo.reset()
        autoremat.clear_plans()
        got = train_step(blocks, blocks, (x,))
        got.grads = {name.replace("._orig_mod", ""): grad for name, grad in got.grads.items()}
        assert_steps_match(got, expected, EAGER_TOL)
        plans = autoremat.recent_plans()
        assert len(plans) == 2  # one per block
        return blocks, plans

    _, high = per_block_plans(1.0)
    _, low = per_block_plans(0.0)
    cap = (max(p.predicted_peak_bytes for p in low) + min(p.predicted_peak_bytes for p in high)) // 2
    assert all(p.predicted_peak_bytes > cap for p in high)
    per_block, plans = per_block_plans(cap)
    assert all(p.target_bytes == cap and p.predicted_peak_bytes <= cap for p in plans)
    # the cap holds per compiled region; the step as a whole may use more than one region's cap
    assert sum(p.predicted_peak_bytes for p in plans) > cap


def _load_example():
    spec = importlib.util.spec_from_file_location("fsdp2_tp_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _eager_reference(example, *, steps: int, batch: int, layers: int):
    """Single process, no parallelism, no compile: losses per step and the step-0 gradients."""
    args = example.ModelArgs(layers=layers)
    model = example.build_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], {}
    for step in range(steps):
        tokens, targets = example.global_batch(args, batch, step)
        loss = example.loss_fn(model(tokens), targets)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads


def _torchrun(tmp_path, *extra: str) -> tuple[dict, float]:
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("AUTOREMAT_MEMORY_BUDGET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(EXAMPLE), "--steps", "2", "--dump", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out), time.perf_counter() - start


def _check_against_eager(result: dict) -> None:
    losses, grads = _eager_reference(_load_example(), steps=2, batch=result["batch"], layers=result["layers"])
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses), **EAGER_TOL)
    assert result["grads"].keys() == grads.keys()
    for name, expected in grads.items():
        torch.testing.assert_close(
            result["grads"][name], expected, **EAGER_TOL, msg=lambda m, n=name: f"{n}: {m}"
        )
    rank0, rank1 = result["digests"]
    assert rank0 and rank0 == rank1, result["digests"]


@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs the gloo backend")
def test_fsdp2_per_block_autoremat_two_ranks_match_eager(tmp_path):
    result, seconds = _torchrun(tmp_path, "--compiler", "eager", "--budget", "0.5")
    assert result["world"] == 2 and result["tp"] == 1
    _check_against_eager(result)
    plans = result["plans"]  # rank 0's; the blocks are identical, so Dynamo compiles one graph
    assert plans and all(
        p["status"] in ("optimal", "within-budget") and p["predicted_peak_bytes"] <= p["target_bytes"]
        for p in plans
    ), plans
    print(f"two-rank gloo FSDP2 run: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs the gloo backend")
@pytest.mark.parametrize(
    "extra", [("--tp", "--compiler", "eager"), ("--compiler", "inductor", "--budget", "0.3")]
)
def test_fsdp2_tp_and_inductor_two_ranks_match_eager(tmp_path, extra):
    result, _ = _torchrun(tmp_path, *extra)
    assert result["tp"] == (2 if "--tp" in extra else 1)
    _check_against_eager(result)
    assert all(p["status"] != "fallback" for p in result["plans"]), result["plans"]


@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs the gloo backend")
def test_fsdp2_step_budget_holds_on_every_rank(tmp_path):
    """One budget for the step (AdamW, FSDP2's sharded state, the unsharded block in flight): every
    rank's measured step peak stays within 2% of it, and the ranks choose the same plans."""
    extra = ("--compiler", "eager", "--step-budget", "0.5", "--seq", "128", "--batch", "8", "--layers", "4")
    result, _ = _torchrun(tmp_path, *extra, "--steps", "3")
    rows = result["step_budget"]
    assert len(rows) == 2
    for _rank, measured, cap, _predicted, status in rows:
        assert status == "within-budget" and measured <= cap * 1.02, rows
    rank0, rank1 = result["digests"]
    assert rank0 and rank0 == rank1, result["digests"]
