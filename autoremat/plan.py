"""The Plan record: what one partitioning decided and predicted, shared by logs, reports and tests.

Plans are plain data (JSON-serialisable) so they can be logged, compared across ranks and stored with
compiled artifacts. The most recent plans of this process are kept in a small ring buffer, which is how
the demo and tests see what the partitioner did without reaching into compiled graphs.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

#: Plans kept in memory; enough for many graph breaks, bounded so long jobs do not accumulate.
_RECENT_CAPACITY = 256
_RECENT: deque[Plan] = deque(maxlen=_RECENT_CAPACITY)


@dataclass(frozen=True)
class SavedValue:
    """One tensor (or SymInt) the forward saves for the backward."""

    name: str
    op: str
    shape: tuple[str, ...]
    dtype: str
    nbytes: int
    #: the user's source line that produced it (from the node's stack trace), if known
    source: str = ""


@dataclass(frozen=True)
class RecomputedOp:
    """One forward op the backward recomputes, with its predicted marginal (fused) time."""

    name: str
    op: str
    predicted_s: float | None = None


@dataclass
class Plan:
    """Decisions and predictions for one joint graph."""

    budget: str
    solver: str
    status: str
    saved: list[SavedValue]
    #: activation bytes kept for backward: storages once, graph inputs and parameters excluded
    #: (None when torch's partitioner made the plan and we did not analyse it)
    saved_bytes: int | None
    #: forward ops the backward recomputes (graph order)
    recomputed: list[RecomputedOp]
    num_joint_nodes: int
    partition_seconds: float
    #: device spec the costs were computed for
    device: str = ""
    #: predicted extra backward time of the recomputation (seconds, hinted sizes)
    predicted_recompute_s: float | None = None
    #: the same as an expression of the size symbols, when it depends on any
    recompute_time_expr: str | None = None
    #: size symbols the decision depended on (dynamic shapes)
    symbols: list[str] = field(default_factory=list)
    #: predicted recompute time of the runtime-optimal (budget 1.0) plan of the same graph
    runtime_optimal_recompute_s: float | None = None
    #: relative optimality gap of the solver (0.0 = proven optimal for its objective; None = heuristic)
    optimality_gap: float | None = None
    #: True when this record was loaded from disk because Inductor's caches skipped the partitioner
    from_cache: bool = False
    #: identifies the compiled graph (Dynamo graph code, input metadata, options)
    graph_key: str = ""
    #: predicted peak of live activation bytes over the step (the memory model's; None = not modelled)
    predicted_peak_bytes: int | None = None
    #: peak the budget allowed, the least peak the solvers found, the runtime-optimal plan's peak
    target_bytes: int | None = None
    least_bytes: int | None = None
    runtime_optimal_bytes: int | None = None
    #: budget solver counters (MILP solves, seconds, problem size, last HiGHS status)
    solver_stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        data["saved"] = [SavedValue(**{**s, "shape": tuple(s["shape"])}) for s in data["saved"]]
        data["recomputed"] = [RecomputedOp(**r) for r in data["recomputed"]]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """sha256 of the decisions alone, for comparing plans across ranks and runs.

        Covers what was saved (names and bytes), what is recomputed, the budget, solver and status.
        Timings, predictions, notes and ``from_cache`` are left out: they legitimately differ between
        ranks (or between a fresh compile and a cache hit) while the decisions must not.
        """
        decisions = {
            "budget": self.budget,
            "solver": self.solver,
            "status": self.status,
            "saved": [[s.name, s.nbytes] for s in self.saved],
            "saved_bytes": self.saved_bytes,
            "recomputed": [r.name for r in self.recomputed],
        }
        return hashlib.sha256(json.dumps(decisions, sort_keys=True).encode()).hexdigest()

    @property
    def predicted_overhead_s(self) -> float | None:
        """Predicted step-time cost of this plan over the runtime-optimal one."""
        if self.predicted_recompute_s is None or self.runtime_optimal_recompute_s is None:
            return None
        return self.predicted_recompute_s - self.runtime_optimal_recompute_s

    def summary(self) -> str:
        saved = "unknown" if self.saved_bytes is None else f"{self.saved_bytes}"
        return (
            f"autoremat plan [{self.solver}, {self.status}] budget={self.budget}: saves "
            f"{len(self.saved)} values ({saved} activation bytes), recomputes "
            f"{len(self.recomputed)} ops"
            + (
                f" (predicted +{self.predicted_recompute_s * 1e3:.3f} ms on {self.device})"
                if self.predicted_recompute_s is not None
                else ""
            )
            + f", {self.num_joint_nodes}-node joint graph partitioned in "
            f"{self.partition_seconds * 1e3:.1f} ms"
        )


_RECORDED = 0  # plans recorded so far (not capped like _RECENT): lets a caller see what a compile added


def record(plan: Plan) -> None:
    global _RECORDED
    _RECENT.append(plan)
    _RECORDED += 1


def recorded_count() -> int:
    return _RECORDED


def recorded_since(count: int) -> list[Plan]:
    """Plans recorded after ``recorded_count()`` returned ``count`` (within the ring buffer)."""
    new = _RECORDED - count
    return list(_RECENT)[-new:] if new > 0 else []


def recent_plans() -> list[Plan]:
    """Plans made in this process, oldest first (at most the last 256)."""
    return list(_RECENT)


def clear_plans() -> None:
    _RECENT.clear()
