"""Turn a solve result into a Plan record: what is saved (with the user's source line), what the
backward recomputes (with predicted times), and the predictions a report needs."""

from __future__ import annotations

import re
from typing import Any

import sympy
import torch
import torch.fx as fx

from autoremat.cost_models import GraphCosts
from autoremat.cost_models.liveness import step_schedule
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.cut import CutResult
from autoremat.passes.search import SolveResult
from autoremat.plan import Plan, RecomputedOp, SavedValue

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def source_line(node: fx.Node) -> str:
    """'file.py:12 in forward: return self.fc(x)' for the innermost user frame, or ''."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    if not frames:
        return ""
    path, line, func, code = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line} in {func}: {code.strip()}"


def _op_name(node: fx.Node) -> str:
    if node.op != "call_function":
        return node.op
    return str(getattr(node.target, "__name__", node.target))


def saved_value(node: fx.Node, analysis: JointGraphAnalysis) -> SavedValue:
    value = node.meta.get("val")
    shape = tuple(str(s) for s in getattr(value, "shape", ()))
    dtype = str(getattr(value, "dtype", type(value).__name__)).replace("torch.", "")
    return SavedValue(
        node.name, _op_name(node), shape, dtype, analysis.facts[node].save_bytes, source_line(node)
    )


def _symbols(cut: CutResult) -> set[Any]:
    symbols: set[Any] = set()
    for node in cut.saved:
        for size in getattr(node.meta.get("val"), "shape", ()):
            if isinstance(size, torch.SymInt):
                symbols |= size.node.expr.free_symbols
    return symbols


def build_plan(
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    solution: SolveResult,
    *,
    budget: str,
) -> Plan:
    """The plan record of ``solution``. Recomputed ops are listed in the order the backward runs
    them (the memory model's schedule), each with its predicted time."""
    cut = solution.cut
    recomputed_nodes = analysis.recomputed(cut.saved)
    times = costs.recompute_times(recomputed_nodes)
    total = sum(times.values(), sympy.Integer(0))
    backward_order = {n: i for i, n in enumerate(step_schedule(analysis, cut.saved).backward)}
    recomputed = [
        RecomputedOp(node.name, _op_name(node), costs.value(times[node]))
        for node in sorted(recomputed_nodes, key=lambda n: (backward_order.get(n, -1), analysis.order[n]))
    ]
    free = total.free_symbols
    optimal_s = costs.value(costs.recompute_time(analysis.recomputed(solution.runtime_optimal.saved)))
    return Plan(
        budget=budget,
        solver=solution.solver,
        status=solution.status,
        saved=[saved_value(n, analysis) for n in cut.saved],
        saved_bytes=cut.storage_bytes(analysis),
        recomputed=recomputed,
        num_joint_nodes=len(analysis.order),
        partition_seconds=0.0,
        device=costs.spec.name,
        predicted_recompute_s=costs.value(total),
        recompute_time_expr=str(total) if free else None,
        symbols=sorted(str(s) for s in free | _symbols(cut)),
        runtime_optimal_recompute_s=optimal_s,
        predicted_peak_bytes=solution.predicted_peak_bytes,
        target_bytes=solution.target_bytes,
        least_bytes=solution.least_bytes,
        runtime_optimal_bytes=solution.runtime_optimal_bytes,
        optimality_gap=solution.gap,
        solver_stats=solution.stats,
        notes=list(analysis.notes) + solution.notes,
    )
