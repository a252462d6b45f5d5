"""Liveness / peak-memory model of one training step: forward, then backward with its recomputation.

The budget is a promise about memory, so it must be checked against a model of the schedule that will
actually run, not against a proxy such as "sum of saved bytes". The schedule is the one our rewrite
produces:

- the forward module runs the forward nodes that the user outputs and the saved values need, in joint
  graph order;
- the backward module runs, in joint order from the first node that reads a tangent, each backward node
  preceded by the forward nodes it needs that were not saved (torch's
  ``reordering_to_mimic_autograd_engine``, which the rewrite applies, places recomputation just in time).

Memory is counted per storage: a view or ``getitem`` aliases its base, a multi-output op allocates all
its outputs at once. A storage is allocated when its producer runs and freed after its last use in the
same module. Saved values live from their producer to their last backward use; the user's forward
outputs (e.g. the loss) and the backward's outputs (gradients) live to the end of the step. The
forward's graph inputs (parameters, buffers, user inputs) are not counted: they exist before the step.
The tangents (incoming gradients) are: autograd creates them during the step, after the forward, and a
compiled block that is not the last one receives a gradient as large as its output. They are live from
the start of the backward to its end (``backward_live_in``): whoever passed them holds them through
the call (a block's ``out.backward(grad)`` measured one gradient above a model that freed it after
its last use, once a plan's peak fell after that use).
While a node runs, its kernel's scratch memory counts too (``workspace.py``). Which storage a value
lives in is decided by ``graph/storage.py``, the aliasing model the solvers' byte charges use too.

This model is exact for the codegen-free compiler. Under Inductor, fusion removes transients and the
scheduler reorders nodes and reuses buffers, so the real peak differs: 0.75 to 1.08 of the prediction
on the benchmark models (benchmarks/results/cpu-quick).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.cost_models.workspace import workspace_bytes
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.graph.placement import ancestors
from autoremat.graph.storage import StorageIndex, StorageKey, storage_of, tensor_bytes


@dataclass(frozen=True)
class StepSchedule:
    """The order in which the forward and backward modules run their nodes."""

    forward: tuple[fx.Node, ...]
    backward: tuple[fx.Node, ...]
    saved: frozenset[fx.Node]
    #: forward outputs the user holds through the backward (loss, logits, mutated inputs' new values)
    fwd_outputs: tuple[fx.Node, ...]
    #: backward outputs (gradients): they outlive the step
    bwd_outputs: tuple[fx.Node, ...]


@dataclass(frozen=True)
class PeakReport:
    """Predicted live activation bytes of one step."""

    peak_bytes: int
    forward_peak_bytes: int
    backward_peak_bytes: int
    #: node at which the peak is reached (its name), for reports
    peak_at: str
    #: live bytes at the end of the forward: saved values plus forward outputs
    forward_end_bytes: int


def _outputs(analysis: JointGraphAnalysis) -> tuple[list[fx.Node], list[fx.Node]]:
    output = next(n for n in reversed(analysis.graph.nodes) if n.op == "output")
    flat = list(compat.arg_tree_leaves(*output.args))
    fwd = [o for o in flat[: analysis.num_fwd_outputs] if isinstance(o, fx.Node)]
    bwd = [o for o in flat[analysis.num_fwd_outputs :] if isinstance(o, fx.Node)]
    return fwd, bwd


def step_schedule(analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> StepSchedule:
    """The schedule our rewrite produces for ``saved``, emulated without building the modules."""
    saved = frozenset(saved)
    order = analysis.order
    fwd_outputs, bwd_outputs = _outputs(analysis)
    placeholders = {n for n in analysis.facts if n.op == "placeholder"}

    fwd_set = ancestors([*fwd_outputs, *saved, *analysis.must_run_in_forward], stop=placeholders)
    fwd_set -= analysis.tangent_closure
    forward = sorted((n for n in fwd_set if n.op == "call_function"), key=order.__getitem__)

    available = saved | placeholders
    bwd_set = {
        n for n in ancestors(bwd_outputs, stop=available) if n.op == "call_function" and n not in available
    }
    tangent_users = [u for n in placeholders if compat.is_tangent(n) for u in n.users]
    first = min((order[u] for u in tangent_users if u in bwd_set), default=None)
    if first is None:  # the backward does not read a tangent: it runs in joint order
        backward = sorted(bwd_set, key=order.__getitem__)
    else:
        backward = _just_in_time(bwd_set, first, order)
    return StepSchedule(tuple(forward), tuple(backward), saved, tuple(fwd_outputs), tuple(bwd_outputs))


def _just_in_time(nodes: set[fx.Node], first: int, order: dict[fx.Node, int]) -> list[fx.Node]:
    """Backward order: each node after ``first`` preceded by the not-yet-run nodes it needs."""
    placed: set[fx.Node] = set()
    result: list[fx.Node] = []

    def insert(root: fx.Node) -> None:
        pending: set[fx.Node] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if node in pending or node in placed or node not in nodes:
                continue
            pending.add(node)
            stack.extend(node.all_input_nodes)
        for node in sorted(pending, key=order.__getitem__):
            placed.add(node)
            result.append(node)

    ordered = sorted(nodes, key=order.__getitem__)
    for node in ordered:
        if order[node] < first and node.target is torch.ops.aten.copy_.default:
            insert(node)
    for node in ordered:
        if order[node] >= first:
            insert(node)
    return result


def live_profile(
    nodes: Sequence[fx.Node],
    live_in: dict[StorageKey, int],
    keep: set[StorageKey],
    memo: StorageIndex,
) -> tuple[list[int], dict[StorageKey, int]]:
    """Run one module's nodes: live bytes while each node runs (its outputs allocated, nothing it
    reads freed yet), and the storages alive at the end.

    ``live_in`` are storages alive on entry (freed after their last use here unless in ``keep``, and
    before the first node when nothing here reads them); ``keep`` storages survive the module.
    """
    last_use: dict[StorageKey, int] = {}
    for i, node in enumerate(nodes):
        for key in memo.touched(node):
            last_use[key] = i
    live = {k: v for k, v in live_in.items() if k in last_use or k in keep}
    total = sum(live.values())
    profile: list[int] = []
    for i, node in enumerate(nodes):
        allocated = memo.allocations(node)
        for key, nbytes in allocated:
            if key not in live:
                live[key] = nbytes
                total += nbytes
        profile.append(total + workspace_bytes(node))
        dead = {key for key, _ in allocated if key not in last_use}  # outputs nobody reads
        dead |= {k for k in memo.touched(node) if last_use.get(k) == i}
        for key in dead - keep:
            if key in live:
                total -= live.pop(key)
    return profile, live


def tangent_storages(analysis: JointGraphAnalysis) -> dict[StorageKey, int]:
    """Bytes of each incoming gradient (a tangent placeholder owns its storage)."""
    return {(n, None): nbytes for n in analysis.tangents if (nbytes := tensor_bytes(n.meta.get("val")))}


def backward_live_in(
    analysis: JointGraphAnalysis, forward_live: dict[StorageKey, int]
) -> dict[StorageKey, int]:
    """Storages alive when the backward starts: what the forward left alive, plus the tangents, which
    autograd has created by then (and whoever passed them holds them to the backward's end)."""
    return {**forward_live, **tangent_storages(analysis)}


def predict_peak(analysis: JointGraphAnalysis, schedule: StepSchedule) -> PeakReport:
    """Peak live activation bytes of ``schedule`` (see the module docstring for what counts)."""
    memo = analysis.storages
    fwd_keep = {storage_of(n, memo) for n in (*schedule.saved, *schedule.fwd_outputs)}
    fwd_profile, live = live_profile(schedule.forward, {}, fwd_keep, memo)
    held = {storage_of(n, memo) for n in schedule.fwd_outputs}
    forward_end = sum(live.values())
    bwd_keep = held | {storage_of(n, memo) for n in schedule.bwd_outputs} | set(tangent_storages(analysis))
    bwd_profile, _ = live_profile(schedule.backward, backward_live_in(analysis, live), bwd_keep, memo)
    fwd_peak, fwd_at = _peak(fwd_profile, schedule.forward)
    bwd_peak, bwd_at = _peak(bwd_profile, schedule.backward)
    fwd_peak = max(fwd_peak, forward_end)
    peak, at = (fwd_peak, fwd_at) if fwd_peak >= bwd_peak else (bwd_peak, bwd_at)
    return PeakReport(peak, fwd_peak, bwd_peak, at, forward_end)


def _peak(profile: list[int], nodes: Sequence[fx.Node]) -> tuple[int, str]:
    if not profile:
        return 0, ""
    i = max(range(len(profile)), key=profile.__getitem__)
    return profile[i], nodes[i].name


def plan_peak(analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> PeakReport:
    """Predicted peak of the plan that saves ``saved``."""
    return predict_peak(analysis, step_schedule(analysis, saved))


class OpByOpMemory:
    """The memory model of the schedule our rewrite emits, op by op (this module's docstring): exact
    for the codegen-free compiler; under Inductor, fusion and buffer reuse move the real peak."""

    name = "op-by-op"

    def peak(self, analysis: JointGraphAnalysis, saved: Iterable[fx.Node]) -> PeakReport:
        return plan_peak(analysis, saved)
