"""autoremat: a torch.compile backend that chooses what a training step saves and what it recomputes.

model = torch.compile(model, backend="autoremat", options={"memory_budget": 0.3})
"""

from autoremat._version import __version__
from autoremat.backend import RematBackend, autoremat_backend, backend
from autoremat.explain import Report, explain
from autoremat.options import MemoryBudget, RematOptions, resolve_options
from autoremat.plan import Plan, RecomputedOp, SavedValue, clear_plans, recent_plans
from autoremat.step import StepBudgetInfeasible, StepPlan, step_plans

__all__ = [
    "MemoryBudget",
    "Plan",
    "RecomputedOp",
    "RematBackend",
    "Report",
    "RematOptions",
    "SavedValue",
    "StepBudgetInfeasible",
    "StepPlan",
    "__version__",
    "autoremat_backend",
    "backend",
    "clear_plans",
    "explain",
    "recent_plans",
    "resolve_options",
    "step_plans",
]
