"""The Plan record: what one partitioning decided and predicted, shared by logs, reports and tests.

Plans are plain data (JSON-serialisable) so they can be logged, compared across ranks and stored with
compiled artifacts. The most recent plans of this process are kept in a small ring buffer, which is how
the demo and tests see what the partitioner did without reaching into compiled graphs.
"""

from __future__ import annotations

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
    #: forward ops the backward recomputes (op names, graph order)
    recomputed: list[str]
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
    target_bytes: int | None = None
    least_bytes: int | None = None
    runtime_optimal_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        data["saved"] = [SavedValue(**{**s, "shape": tuple(s["shape"])}) for s in data["saved"]]
        return cls(**data)

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


def record(plan: Plan) -> None:
    _RECENT.append(plan)


def recent_plans() -> list[Plan]:
    """Plans made in this process, oldest first (at most the last 256)."""
    return list(_RECENT)


def clear_plans() -> None:
    _RECENT.clear()
