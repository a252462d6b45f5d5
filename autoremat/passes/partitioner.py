"""RematPartitioner: the pipeline analyse → solve → rewrite → record, behind Inductor's partitioner hook.

Inductor calls it with the joint graph after its joint-graph passes (or AOTAutograd does, on the
codegen-free path). Any internal failure falls back to torch's own partitioner with a logged warning:
a bug in our pass must never stop a user's training run. The only error we raise on purpose is a byte
budget that cannot be met when the user asked for ``strict=True``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat._version import __version__
from autoremat.cost_models import GraphCosts, calibrate, default_cost_model
from autoremat.options import RematOptions
from autoremat.passes.analysis import JointGraphAnalysis, analyse
from autoremat.passes.interim_budget import solve_to_target
from autoremat.passes.mincut import CutResult, cheap_by, solve_min_cut
from autoremat.passes.rewrite import recomputed_ops, split_joint_graph
from autoremat.plan import Plan, SavedValue, record

log = logging.getLogger("autoremat")

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent


class BudgetInfeasible(ValueError):
    """A byte budget below the least activation memory the graph allows (strict mode only)."""


@functools.cache
def _source_digest() -> str:
    """Hash of the package's own source: any code change must invalidate Inductor's caches."""
    files = tuple(sorted(str(p) for p in _PACKAGE_DIR.rglob("*.py")))
    return compat.get_hash_for_files(files).hex()


def _saved_value(node: fx.Node, analysis: JointGraphAnalysis) -> SavedValue:
    value = node.meta.get("val")
    shape = tuple(str(s) for s in getattr(value, "shape", ()))
    dtype = str(getattr(value, "dtype", type(value).__name__)).replace("torch.", "")
    op = str(getattr(node.target, "__name__", node.target)) if node.op == "call_function" else node.op
    return SavedValue(node.name, op, shape, dtype, analysis.facts[node].save_bytes)


class RematPartitioner(compat.CustomPartitionerFn):
    """autoremat's partitioner; one instance per backend configuration.

    Cache identity (``uuid``): package version, source digest, the options fingerprint and the
    calibration data, so a changed budget, device, measurement or line of our code never reuses a stale
    compiled artifact. (The device spec follows from the options and the graph's device, which is part
    of the graph's own cache key.)
    """

    def __init__(self, options: RematOptions, device: torch.device | None = None) -> None:
        self.options = options
        self.calibration = calibrate(device) if options.calibrate else None

    def uuid(self) -> str:
        cal = self.calibration.fingerprint() if self.calibration else ""
        text = f"autoremat-{__version__}-{_source_digest()}-{self.options.fingerprint()}-{cal}"
        return hashlib.sha256(text.encode()).hexdigest()

    def __call__(
        self,
        gm: fx.GraphModule,
        joint_inputs: Sequence[object],
        *,
        num_fwd_outputs: int,
        static_lifetime_input_indices: list[int] | None = None,
        **kwargs: Any,
    ) -> tuple[fx.GraphModule, fx.GraphModule]:
        start = time.perf_counter()
        try:
            fw, bw, plan = self._partition(gm, num_fwd_outputs, static_lifetime_input_indices)
        except BudgetInfeasible:
            raise
        except Exception as exc:  # noqa: BLE001 - any bug of ours must degrade, not crash training
            log.warning(
                "autoremat: partitioning failed (%s: %s); falling back to torch's min-cut partitioner",
                type(exc).__name__,
                exc,
            )
            fw, bw = compat.torch_min_cut_partition(
                gm,
                joint_inputs,
                num_fwd_outputs=num_fwd_outputs,
                static_lifetime_input_indices=static_lifetime_input_indices,
            )
            plan = Plan(
                budget=self.options.memory_budget.describe(),
                solver="torch-min-cut",
                status="fallback",
                saved=[],
                saved_bytes=None,
                recomputed=recomputed_ops(fw, bw),
                num_joint_nodes=len(gm.graph.nodes),
                partition_seconds=0.0,
                notes=[f"fallback after {type(exc).__name__}: {exc}"],
            )
        plan.partition_seconds = time.perf_counter() - start
        record(plan)
        log.info("%s", plan.summary())
        compat.trace_structured(
            "artifact",
            metadata_fn=lambda: {"name": "autoremat_plan", "encoding": "json"},
            payload_fn=plan.to_json,
        )
        return fw, bw

    def _partition(
        self, gm: fx.GraphModule, num_fwd_outputs: int, static_idx: list[int] | None
    ) -> tuple[fx.GraphModule, fx.GraphModule, Plan]:
        gm.graph.eliminate_dead_code()
        gm.recompile()
        if compat.functorch_config.cse:
            gm.graph = compat.fx_graph_cse(gm.graph)
            gm.recompile()
        analysis = analyse(
            gm.graph, num_fwd_outputs=num_fwd_outputs, static_lifetime_input_indices=static_idx
        )
        model = default_cost_model(_graph_device(gm.graph), self.options.device, self.calibration)
        costs = model.for_graph(analysis)
        cut, solver, status, extra = self._solve(analysis, costs)
        fw, bw = split_joint_graph(gm, analysis, cut.saved)
        recompute_s = costs.recompute_time(_recomputed_nodes(analysis, cut))
        plan = Plan(
            budget=self.options.memory_budget.describe(),
            solver=solver,
            status=status,
            saved=[_saved_value(n, analysis) for n in cut.saved],
            saved_bytes=cut.storage_bytes(analysis),
            recomputed=recomputed_ops(fw, bw),
            num_joint_nodes=len(analysis.order),
            partition_seconds=0.0,
            device=costs.spec.name,
            predicted_recompute_s=costs.value(recompute_s),
            recompute_time_expr=str(recompute_s) if recompute_s.free_symbols else None,
            symbols=sorted(str(s) for s in recompute_s.free_symbols | _saved_symbols(cut)),
            notes=list(analysis.notes) + extra.pop("notes", []),
            **extra,
        )
        return fw, bw, plan

    def _solve(
        self, analysis: JointGraphAnalysis, costs: GraphCosts
    ) -> tuple[CutResult, str, str, dict[str, Any]]:
        budget = self.options.memory_budget
        rules = cheap_by(analysis, costs.is_cheap_to_recompute)
        high = solve_min_cut(analysis, rules)
        if budget.kind == "auto":
            note = "memory_budget='auto' is not enforced yet: planned the runtime-optimal cut"
            log.warning("autoremat: %s", note)
            return high, "min-cut", "optimal", {"notes": [note]}
        if budget.kind == "fraction" and budget.value >= 1.0:
            return high, "min-cut", "optimal", {}
        target = (
            {"fraction": float(budget.value)}
            if budget.kind == "fraction"
            else {"cap_bytes": int(budget.value)}
        )
        outcome = solve_to_target(analysis, **target, base=rules, cost_s=costs.standalone_s, high=high)
        extra: dict[str, Any] = {
            "target_bytes": outcome.target_bytes,
            "least_bytes": outcome.low_bytes,
            "runtime_optimal_bytes": outcome.high_bytes,
            "notes": [],
        }
        status = "within-budget"
        if not outcome.feasible:
            message = (
                f"memory_budget={budget.describe()} is below the least activation memory this graph "
                f"allows ({outcome.low_bytes} bytes); using the least-memory plan"
            )
            if self.options.strict:
                raise BudgetInfeasible(f"autoremat (strict=True): {message}")
            log.warning("autoremat: %s", message)
            extra["notes"].append(message)
            status = "budget-infeasible"
        return outcome.cut, "interim-budget", status, extra


def _graph_device(graph: fx.Graph) -> torch.device | None:
    for node in graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _recomputed_nodes(analysis: JointGraphAnalysis, cut: CutResult) -> set[fx.Node]:
    """Forward nodes the backward must recompute: ancestors of what it reads, stopping at saved values."""
    saved = set(cut.saved)
    needed: set[fx.Node] = set()
    stack = [n for n in analysis.backward_reads if n not in saved]
    while stack:
        node = stack.pop()
        if node in needed or node in saved or node.op == "placeholder":
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    return {n for n in needed if analysis.is_forward(n)}


def _saved_symbols(cut: CutResult) -> set[Any]:
    symbols: set[Any] = set()
    for node in cut.saved:
        value = node.meta.get("val")
        for size in getattr(value, "shape", ()):
            if isinstance(size, torch.SymInt):
                symbols |= size.node.expr.free_symbols
    return symbols
