"""Turn a solved cut into a Plan record: what is saved (with the user's source line), what the backward
recomputes (with predicted times), and the predictions a report needs."""

from __future__ import annotations

import re
from typing import Any

import sympy
import torch
import torch.fx as fx

from autoremat.cost_models import GraphCosts
from autoremat.passes.analysis import JointGraphAnalysis
from autoremat.passes.liveness import plan_peak
from autoremat.passes.mincut import CutResult
from autoremat.passes.rewrite import recomputed_ops
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


def recomputed_nodes(analysis: JointGraphAnalysis, cut: CutResult) -> set[fx.Node]:
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


def _symbols(cut: CutResult) -> set[Any]:
    symbols: set[Any] = set()
    for node in cut.saved:
        for size in getattr(node.meta.get("val"), "shape", ()):
            if isinstance(size, torch.SymInt):
                symbols |= size.node.expr.free_symbols
    return symbols


def build_plan(
    *,
    analysis: JointGraphAnalysis,
    costs: GraphCosts,
    cut: CutResult,
    runtime_optimal: CutResult,
    fw: fx.GraphModule,
    bw: fx.GraphModule,
    budget: str,
    solver: str,
    status: str,
    extra: dict[str, Any],
) -> Plan:
    times = costs.recompute_times(recomputed_nodes(analysis, cut))
    total = sum(times.values(), sympy.Integer(0))
    by_name = {n.name: n for n in times}
    recomputed = []
    for name in recomputed_ops(fw, bw):
        node = by_name.get(name)
        predicted = costs.value(times[node]) if node is not None else None
        recomputed.append(RecomputedOp(name, _op_name(node) if node is not None else "", predicted))
    free = total.free_symbols
    peak = extra.pop("predicted_peak_bytes", None)
    if peak is None:
        peak = plan_peak(analysis, cut.saved).peak_bytes
    optimal_s = costs.value(costs.recompute_time(recomputed_nodes(analysis, runtime_optimal)))
    return Plan(
        budget=budget,
        solver=solver,
        status=status,
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
        predicted_peak_bytes=peak,
        notes=list(analysis.notes) + extra.pop("notes", []),
        **extra,
    )
