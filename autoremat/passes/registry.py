"""The budget solvers by name: the ``solver`` option accepts exactly these keys, and a new solver is
one new file (a class implementing ``solver.Solver``) plus one line here."""

from __future__ import annotations

from autoremat.passes.greedy import GreedySolver
from autoremat.passes.milp_solver import MilpSolver
from autoremat.passes.mincut import MinCutSolver
from autoremat.passes.solver import Solver
from autoremat.passes.torch_knob import TorchKnobSolver

#: user-selectable solvers, the default first
SOLVERS: dict[str, type[Solver]] = {"milp": MilpSolver, "greedy": GreedySolver}
DEFAULT_SOLVER = "milp"
#: always part of a search: the min-cut's extremes, and greedy's sweep up front and its bisection as
#: the fallback when the chosen solver fails or finds nothing faster
BASELINE = MinCutSolver
FALLBACK = GreedySolver
#: explore in every search besides the chosen solver: the baseline, the fallback's sweep, and the
#: plans torch's own budget knob makes (so the pool always holds what we promise to beat)
EXPLORERS: tuple[type[Solver], ...] = (BASELINE, FALLBACK, TorchKnobSolver)


def solver_names() -> tuple[str, ...]:
    return tuple(SOLVERS)
