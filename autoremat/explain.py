"""``autoremat.explain``: what the partitioner decides for a model, without running a training step.

It compiles the model's forward with the autoremat backend (codegen-free by default, so it takes
seconds) and collects the Plan of every graph: what is saved (with the source line that produced it),
what the backward recomputes and its predicted cost, predicted activation memory, the solver's status
and any fallback. ``Report.pareto()`` repeats this over budgets to show the memory/time trade-off.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autoremat import plan as plan_module
from autoremat.backend import backend
from autoremat.plan import Plan

DEFAULT_SWEEP = (1.0, 0.75, 0.5, 0.25, 0.1, 0.0)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt_ms(s: float | None) -> str:
    return "unknown" if s is None else f"{s * 1e3:.3f} ms"


@dataclass(frozen=True)
class ParetoPoint:
    budget: str
    #: bytes saved for the backward, and the predicted peak of the step (what the budget caps)
    activation_bytes: int
    predicted_recompute_s: float
    peak_bytes: int = 0


@dataclass
class Report:
    """Plans of every graph of one model under one set of options."""

    model: str
    options: dict[str, Any]
    plans: list[Plan]
    _rerun: Callable[..., Report] | None = field(default=None, repr=False, compare=False)

    @property
    def activation_bytes(self) -> int:
        return sum(p.saved_bytes or 0 for p in self.plans)

    @property
    def peak_bytes(self) -> int:
        """Predicted peak activation memory (summed over graphs: an upper bound with graph breaks)."""
        return sum(p.predicted_peak_bytes or 0 for p in self.plans)

    @property
    def predicted_recompute_s(self) -> float:
        return sum(p.predicted_recompute_s or 0.0 for p in self.plans)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options, "plans": [p.to_dict() for p in self.plans]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(data["model"], data["options"], [Plan.from_dict(p) for p in data["plans"]])

    def __str__(self) -> str:
        lines = [f"autoremat plan for {self.model} (options {self.options})"]
        for i, plan in enumerate(self.plans):
            lines += _plan_lines(i, plan)
        if not self.plans:
            lines.append("no training graph was partitioned (inference only, or no inputs need grad)")
        return "\n".join(lines)

    def pareto(
        self, budgets: Sequence[float | str] = DEFAULT_SWEEP, path: str | None = None
    ) -> list[ParetoPoint]:
        """Predicted peak activation memory vs predicted recompute time per budget; a PNG at ``path``."""
        if self._rerun is None:
            raise ValueError("this report was loaded from JSON; call autoremat.explain(...) to sweep budgets")
        points = []
        for budget in budgets:
            report = self._rerun(budget)
            points.append(
                ParetoPoint(
                    str(budget), report.activation_bytes, report.predicted_recompute_s, report.peak_bytes
                )
            )
        if path is not None:
            plot_pareto(points, path, title=f"{self.model}: predicted memory vs recompute time")
        return points


def _overhead(overhead: float | None) -> str:
    """A plan can be faster than the budget-1.0 plan (another search found a plan the budget-1.0
    MILP solve did not): say so rather than print a negative overhead."""
    if overhead is not None and overhead < 0:
        return f"{_fmt_ms(-overhead)} less than the budget-1.0 plan, which this plan beats on peak and time"
    return f"overhead vs runtime-optimal: {_fmt_ms(overhead)}"


def _plan_lines(index: int, plan: Plan) -> list[str]:
    gap = "heuristic (no bound)" if plan.optimality_gap is None else f"{plan.optimality_gap:.1%}"
    overhead = plan.predicted_overhead_s
    lines = [
        "",
        f"graph {index}: {plan.solver} [{plan.status}]{' (loaded from cache)' if plan.from_cache else ''},"
        f" budget {plan.budget}, device {plan.device}, {plan.num_joint_nodes}-node joint graph,"
        f" partitioned in {plan.partition_seconds * 1e3:.0f} ms",
        f"  activation memory saved for backward: {_fmt_bytes(plan.saved_bytes)}",
        f"  predicted peak activation memory: {_fmt_bytes(plan.predicted_peak_bytes)}"
        + (
            f" (budget {_fmt_bytes(plan.target_bytes)}; runtime-optimal "
            f"{_fmt_bytes(plan.runtime_optimal_bytes)}, least {_fmt_bytes(plan.least_bytes)})"
            if plan.least_bytes is not None
            else ""
        ),
        f"  predicted recompute time: {_fmt_ms(plan.predicted_recompute_s)} ({_overhead(overhead)});"
        f" optimality gap: {gap}",
    ]
    if plan.symbols:
        lines.append(f"  depends on size symbols: {', '.join(plan.symbols)}")
    lines.append("  | saved | op | shape | dtype | bytes | source |")
    lines.append("  |---|---|---|---|---:|---|")
    params = [v for v in plan.saved if v.op == "placeholder" and v.nbytes == 0]
    for v in plan.saved:
        if v in params:
            continue
        lines.append(
            f"  | {v.name} | {v.op} | {'x'.join(v.shape) or '()'} | {v.dtype} | {v.nbytes} | {v.source} |"
        )
    if params:
        lines.append(f"  (and {len(params)} parameters, which backward reads in place at no memory cost)")
    if plan.recomputed:
        lines.append("  | recomputed | op | predicted µs |")
        lines.append("  |---|---|---:|")
        for r in plan.recomputed:
            t = "" if r.predicted_s is None else f"{r.predicted_s * 1e6:.2f}"
            lines.append(f"  | {r.name} | {r.op} | {t} |")
    else:
        lines.append("  nothing is recomputed")
    lines += [f"  note: {n}" for n in plan.notes]
    return lines


def plot_pareto(points: Sequence[ParetoPoint], path: str, title: str) -> None:
    """Write a PNG of predicted peak activation memory against predicted recompute time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "Report.pareto(path=...) draws with matplotlib, which is not installed: "
            "pip install 'autoremat[plot]' (or pip install matplotlib)"
        ) from exc
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p.predicted_recompute_s * 1e3 for p in points]
    ys = [p.peak_bytes / 2**20 for p in points]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"budget {p.budget}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("predicted recompute time per step (ms)")
    ax.set_ylabel("predicted peak activation memory (MiB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def explain(
    model: Callable[..., Any],
    *example_inputs: Any,
    memory_budget: float | int | str = 1.0,
    compiler: str = "eager",
    **options: Any,
) -> Report:
    """Partition ``model`` for ``example_inputs`` and report the plans (no backward is run).

    The codegen-free compiler (default) sees the same joint graph the Inductor path does, minus
    Inductor's pattern-matching passes; pass ``compiler="inductor"`` to explain exactly that path.
    Buffers the forward updates (e.g. BatchNorm statistics) are restored afterwards. It calls
    ``torch.compiler.reset()`` before and after, so other compiled functions recompile on next use.
    """
    configured = backend(memory_budget=memory_budget, compiler=compiler, **options)
    buffers = _snapshot_buffers(model)
    torch.compiler.reset()
    before = plan_module.recorded_count()
    try:
        torch.compile(model, backend=configured)(*example_inputs)
    finally:
        torch.compiler.reset()
        _restore_buffers(buffers)
    name = type(model).__name__ if isinstance(model, torch.nn.Module) else getattr(model, "__name__", "model")
    shown = {"memory_budget": memory_budget, "compiler": compiler, **options}

    def rerun(budget: float | str) -> Report:
        return explain(model, *example_inputs, memory_budget=budget, compiler=compiler, **options)

    return Report(name, shown, plan_module.recorded_since(before), rerun)


def _snapshot_buffers(model: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(model, torch.nn.Module):
        return []
    return [(b, b.detach().clone()) for b in model.buffers()]


def _restore_buffers(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buf, saved in snapshot:
            buf.copy_(saved)
