"""Exact solver for a BudgetProblem: a mixed-integer linear program solved by HiGHS (scipy.optimize.milp).

Only the save decisions are binary. Recompute flags, storage-group flags and the running memory totals
are continuous: for binary saves, the least recompute set is integral, and minimising time (or memory)
drives every continuous flag to it.

The memory totals are written as running sums along the schedule (``S_t = S_{t+1} + bytes released
at t``) rather than one dense row per position, so the program has O(nodes + edges + positions)
non-zeros and a 5,000-node joint graph stays a few-second solve.

On request the peak rows are generated lazily (``_Positions``): a program with the peak rows of only
some positions is a relaxation, so its dual bound bounds the full program; its answer is checked
against every position's row, and the positions it exceeds are added for the next solve, until an
answer fits everywhere (it is then the full program's answer, with the same proof). A plan's peak
sits at a few positions, so a few rounds of a few dozen rows replace thousands. That pays where the
linear programs are most of the work (all blocks of a deep model tied: few decisions, a long
schedule; 57 layers of a GPT at budget 1.0: 7.9 s with every row, 1.0-3.0 s lazily); where
branch-and-bound is (the whole program of the same model), each round repeats it, and lazy rows
measured slower (3.7 vs 8.3 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from autoremat.passes.budget_problem import UNUSED, BudgetProblem, weighted_backward, weighted_forward

log = logging.getLogger("autoremat")

#: objective unit: microseconds keep coefficients O(1) for HiGHS' tolerances
_TIME_SCALE = 1e6
#: weight of the secondary term (peak when minimising time, time when minimising peak): small enough
#: never to trade against the primary objective, large enough to break ties towards the better plan
_TIE_WEIGHT = 1e-6
#: relative optimality gap at which HiGHS may stop: the cost model is nowhere near 1% accurate, so
#: proving the last 1% of predicted recompute time optimal buys nothing and can cost seconds
MIP_REL_GAP = 1e-2

#: HiGHS options that switch off its root sub-MIP heuristics (RENS, RINS, the reduced-cost one), for
#: ``solve_budget(root_heuristics=False)``. scipy hands options it does not know to HiGHS verbatim,
#: with a warning that ``_Program._milp`` keeps from the user; a bundled HiGHS older than these
#: options ignores them with a warning kept back too, and solves with its sub-MIPs (slower, the same
#: proofs).
_NO_ROOT_SUB_MIPS = {
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_root_reduced_cost": False,
}

#: HiGHS needs a positive time limit; a solve given (almost) no time still returns at once
_MIN_TIME_LIMIT_S = 0.01
#: binaries come back as floats within HiGHS' integrality tolerance: round at one half
_BINARY_THRESHOLD = 0.5

#: the most positions of each phase (forward, backward) one round adds: the worst exceeded
ROWS_PER_ROUND = 24
#: rounds after which the program is solved with every row (bounds the work whatever the problem)
MAX_ROW_ROUNDS = 6

_STATUS = {0: "optimal", 1: "limit-reached", 2: "infeasible", 3: "unbounded", 4: "failed"}


@dataclass(frozen=True)
class MilpResult:
    """Outcome of one solve; ``saved`` is None when HiGHS found no feasible point."""

    status: str
    saved: frozenset[int] | None
    #: predicted recompute seconds and model peak bytes of ``saved``
    time_s: float | None
    peak_bytes: int | None
    #: relative gap between the solution and HiGHS' bound (0.0 = proven optimal), None if unknown
    gap: float | None
    solve_seconds: float
    num_binaries: int
    num_rows: int
    #: the program's own values at the solution (its peak variable, and its recompute flags times
    #: costs): the linearisation, which tests check against the evaluator's ``time_s``/``peak_bytes``
    program_time_s: float | None = None
    program_peak_bytes: float | None = None
    #: "tied" or "mixed" when the saves were restricted (``block_milp.py``), else None
    restricted: str | None = None
    #: a proven lower bound on the objective's own quantity (seconds of recompute, or bytes of peak)
    #: over every plan the program allows: HiGHS' dual bound, less the tie-breaking term's share
    bound: float | None = None
    #: programs solved for this answer: more than one where the memory rows were added lazily
    rounds: int = 1


def within_gap(gap: float | None) -> bool:
    """Whether ``gap`` is proven and within the gap at which HiGHS stops (``MIP_REL_GAP``)."""
    return gap is not None and gap <= MIP_REL_GAP


def relative_gap(value: float, bound: float) -> float:
    """How far ``value`` is above the lower ``bound``, relative to it; 0 for a zero value (neither
    objective goes below zero)."""
    return 0.0 if value == 0 else max(value - bound, 0.0) / value


class _Program:
    """Column/row bookkeeping for one sparse MILP."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []
        self.cost: list[float] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []

    def var(self, lo: float, hi: float, *, integer: bool = False, cost: float = 0.0) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(1 if integer else 0)
        self.cost.append(cost)
        return len(self.lower) - 1

    def row(self, terms: dict[int, float], lo: float, hi: float) -> None:
        r = len(self.row_lo)
        for col, val in terms.items():
            if val != 0.0:
                self.rows.append(r)
                self.cols.append(col)
                self.vals.append(val)
        self.row_lo.append(lo)
        self.row_hi.append(hi)

    def solve(self, time_limit: float, node_limit: int | None = None, root_heuristics: bool = True) -> object:
        shape = (len(self.row_lo), len(self.lower))
        matrix = coo_array((self.vals, (self.rows, self.cols)), shape=shape).tocsr()
        constraints = LinearConstraint(matrix, self.row_lo, self.row_hi) if self.row_lo else ()
        with native_output_to_debug_log():
            return self._milp(constraints, time_limit, node_limit, root_heuristics)

    def _milp(
        self, constraints: object, time_limit: float, node_limit: int | None, root_heuristics: bool = True
    ) -> object:
        if not root_heuristics:
            # scoped, not a module-level filter: one added at import is lost when the import happens
            # inside someone's ``catch_warnings`` (pytest's, for one); the price is that the swap of
            # the process-wide filters is not thread-safe before Python 3.14 (a concurrent thread's
            # warning may pass this filter or miss its own for the length of a solve)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Unrecognized option")
                return self._scipy_milp(constraints, time_limit, node_limit, _NO_ROOT_SUB_MIPS)
        return self._scipy_milp(constraints, time_limit, node_limit, {})

    def _scipy_milp(
        self, constraints: object, time_limit: float, node_limit: int | None, extra: dict[str, object]
    ) -> object:
        return milp(
            np.asarray(self.cost),
            integrality=np.asarray(self.integer),
            bounds=Bounds(self.lower, self.upper),
            constraints=constraints,
            options={
                "time_limit": max(time_limit, _MIN_TIME_LIMIT_S),
                "mip_rel_gap": MIP_REL_GAP,
                "disp": False,
                **({"node_limit": node_limit} if node_limit is not None else {}),
                **extra,
            },
        )


#: guards the process-wide file-descriptor swap below, which concurrent solves share
_FD_LOCK = threading.Lock()
#: the C-level streams HiGHS may write to: stdout (its stray debug printf) and stderr
_NATIVE_FDS = (1, 2)


@dataclass
class _Redirect:
    """The swap in force: how many solves are inside it, and per descriptor the copy of where it
    pointed and the temporary file it points at meanwhile."""

    users: int = 0
    swapped: list[tuple[int, int, Any]] = field(default_factory=list)


_REDIRECT = _Redirect()
#: the mark of HiGHS' own lines (its stray debug text names its classes: ``HighsMipSolverData::...``)
_HIGHS_MARK = b"Highs"


@contextlib.contextmanager
def native_output_to_debug_log() -> Iterator[None]:
    """Keep HiGHS' C-level output off the user's terminal unless the ``autoremat`` logger asks for it.

    ``disp=False`` silences HiGHS' log, but some HiGHS builds (scipy 1.13-1.17) also ``printf`` debug
    lines such as ``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();`` straight
    to file descriptor 1, which no Python-level redirection or solver option reaches. So, when the
    logger is not at DEBUG, fds 1 and 2 point at temporary files while any solve runs, C's stdio
    buffers are flushed before they are restored (or the text would leak out later), HiGHS' lines are
    logged at DEBUG, and the rest is written where it was headed: the process's other threads keep
    writing meanwhile (the search's own warnings while a solve runs ahead, ``solves_ahead.py``),
    and their text must reach the terminal, if late. Solves on two threads share one swap: the
    first to start makes it, the last to end restores it, so neither leaves the other's output on
    the terminal. At DEBUG nothing is redirected, so the output stays live.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _FD_LOCK:
        if _REDIRECT.users == 0:
            _REDIRECT.swapped = _swap_native_fds()
        _REDIRECT.users += 1
    try:
        yield
    finally:
        with _FD_LOCK:
            _REDIRECT.users -= 1
            if _REDIRECT.users == 0:
                swapped, _REDIRECT.swapped = _REDIRECT.swapped, []
                _end_swap(swapped)


def _swap_native_fds() -> list[tuple[int, int, Any]]:
    """fds 1 and 2 pointed at temporary files: (fd, a copy of where it pointed, its file) each;
    none when there are no such descriptors (an embedded interpreter)."""
    _flush_python_streams()  # Python's own buffered text belongs to the terminal
    swapped: list[tuple[int, int, Any]] = []
    try:
        for fd in _NATIVE_FDS:
            sink = tempfile.TemporaryFile()
            try:
                copy = os.dup(fd)
            except OSError:
                sink.close()
                raise
            swapped.append((fd, copy, sink))
            os.dup2(sink.fileno(), fd)
    except (OSError, ValueError):  # leave them be
        _end_swap(swapped)
        return []
    return swapped


def _end_swap(swapped: list[tuple[int, int, Any]]) -> None:
    """Descriptors back where they were; of what their files caught, HiGHS' lines logged at DEBUG
    and the rest written to the descriptor it was meant for."""
    if swapped:
        _flush_python_streams()
        _flush_c_stdio()
    for fd, copy, sink in reversed(swapped):
        os.dup2(copy, fd)
        os.close(copy)
        try:
            sink.seek(0)
            lines = sink.read().splitlines(keepends=True)
        finally:
            sink.close()
        highs = b"".join(line for line in lines if _HIGHS_MARK in line).decode(errors="replace").strip()
        if highs:
            log.debug("autoremat: HiGHS wrote: %s", highs)
        _write_all(fd, b"".join(line for line in lines if _HIGHS_MARK not in line))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or detached stream
                pass


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: push C stdio's buffered text into the redirected descriptors before restoring."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C runtime symbols to reach (e.g. Windows)
        pass


def _add(terms: dict[int, float], col: int, val: float) -> None:
    terms[col] = terms.get(col, 0.0) + val


def solve_budget(
    problem: BudgetProblem,
    *,
    cap_bytes: int | None = None,
    minimise: str = "time",
    time_limit: float = 5.0,
    exclude: Iterable[frozenset[int]] = (),
    node_limit: int | None = None,
    tied: Iterable[Sequence[int]] = (),
    choices: Iterable[Choice] = (),
    relaxation: bool = False,
    lazy_rows: bool = False,
    tied_recompute: Iterable[Sequence[int]] = (),
    root_heuristics: bool = True,
) -> MilpResult:
    """Minimum recompute time with model peak <= ``cap_bytes`` (``minimise="time"``), or the least
    model peak (``minimise="peak"``, cap optional). ``exclude`` lists saved sets the answer must differ
    from (no-good cuts: plans a finer check rejected). ``node_limit`` bounds branch-and-bound by work
    rather than time: the answer is then the same on every machine.

    ``tied`` and ``choices`` restrict the save decisions (repeated blocks, ``block_milp.py``): each
    tied group of candidates is saved all or none; each choice's members are saved in one of its
    patterns. The memory rows stay those of the whole problem, so a restricted answer is exact for
    the model, and feasible for the unrestricted problem; it is optimal only within the restriction.

    ``relaxation`` solves the linear relaxation instead (every binary continuous): no plan, only
    ``bound``, in a fraction of a MILP's time. With many repeated blocks it is tight (a fractional
    save in one block is nearly matched by saving it in that fraction of the blocks): at 29 layers
    of a GPT it is within 0.5-0.9% of the best plan found, at 12 layers 7-17%.

    ``lazy_rows`` adds the peak rows in rounds (module docstring): the same answer's proof, for a
    program with few decisions on a long schedule; ``rounds`` says how many programs it took.
    ``tied_recompute`` groups candidates recomputed all or none (``block_milp.BlockRestriction.
    interior``): a further restriction, unless the groups' recomputations are alike anyway.

    ``root_heuristics=False`` skips HiGHS' root sub-MIP heuristics: on the whole program of a deep
    model they are most of the work, each sub-MIP a large program itself (29 GPT layers at budget
    0.5: 6.6 of the 50-node try's 7.5 s; without them 1.1 s, the same bound and an answer proven
    within 0.7%), while on a small or restricted program they find the answers (``block_milp.py``)."""
    if minimise not in ("time", "peak"):
        raise ValueError(f"minimise={minimise!r} is invalid: expected 'time' or 'peak'")
    start = time.perf_counter()
    tied, choices, exclude = list(tied), list(choices), list(exclude)
    tied_recompute = list(tied_recompute)
    restricted = "mixed" if choices else "tied" if tied or tied_recompute else None
    p = problem
    # peak in units of the largest base so both objectives are O(1) per unit of their own
    peak_unit = float(max([1, *p.bwd_base, *p.fwd_base, *p.group_bytes]))
    time_unit = max(sum(p.cost_s) * _TIME_SCALE, 1.0)
    positions = _Positions() if lazy_rows else None
    rounds = 0
    while True:
        rounds += 1
        prog, cols = _program(
            p, cap_bytes, minimise, exclude, (tied, tied_recompute, choices), positions, peak_unit, time_unit
        )
        binaries = sum(prog.integer)
        if relaxation:
            prog.integer = [0] * len(prog.integer)
        res = prog.solve(time_limit - (time.perf_counter() - start), node_limit, root_heuristics)
        if positions is None or res.x is None:
            break  # every row was in the program, or a relaxation of it has no solution: neither has it
        limit = res.x[cols.peak] * peak_unit * (1 + _PEAK_TOLERANCE)
        keep, save = [res.x[c] for c in cols.keep], [res.x[c] for c in cols.save]
        live = weighted_forward(p, keep, save), weighted_backward(p, keep, [res.x[c] for c in cols.recompute])
        if not positions.add_exceeded(*live, limit):
            break  # within the program's peak at every position: the full program's answer
        if rounds >= MAX_ROW_ROUNDS:
            positions = None
    elapsed = time.perf_counter() - start
    status = _STATUS.get(res.status, "failed")
    if status == "failed" and res.x is not None:  # a limit HiGHS reports under another code (e.g.
        status = "limit-reached"  # scipy 1.17 maps a node limit to "Solution limit reached", 4)
    # an LP's objective bounds the program only once it is solved (stopped early, it may be above)
    dual = (res.fun if res.status == 0 else None) if relaxation else getattr(res, "mip_dual_bound", None)
    bound = None
    if dual is not None and math.isfinite(dual):
        if minimise == "time":  # objective: time / time_unit + tie * peak / peak_unit, peak <= cap
            ceiling = cap_bytes if cap_bytes is not None else _peak_ceiling(p)
            tie = _TIE_WEIGHT * ceiling / peak_unit
            bound = max(dual - tie, 0.0) * time_unit / _TIME_SCALE
        else:  # objective: tie * time / time_unit (at most tie) + peak / peak_unit
            bound = max(dual - _TIE_WEIGHT, 0.0) * peak_unit
    if res.x is None or relaxation:
        return MilpResult(
            status,
            None,
            None,
            None,
            None,
            elapsed,
            binaries,
            len(prog.row_lo),
            restricted=restricted,
            bound=bound,
            rounds=rounds,
        )
    saved = _saved(p, res.x, cols)
    model_peak, _ = p.peak_bytes(saved)
    gap = getattr(res, "mip_gap", None)
    gap = float(gap) if gap is not None else (0.0 if status == "optimal" else None)
    program_time = sum(res.x[cols.recompute[v]] * p.cost_s[v] for v in range(p.n))
    return MilpResult(
        status,
        saved,
        p.time_s(set(saved)),
        model_peak,
        gap,
        elapsed,
        binaries,
        len(prog.row_lo),
        program_time_s=float(program_time),
        program_peak_bytes=float(res.x[cols.peak] * peak_unit),
        restricted=restricted,
        bound=bound,
        rounds=rounds,
    )


#: relative slack of the program's peak within which a position's modelled memory counts as within it
#: (HiGHS' feasibility tolerance, 1e-7 of the memory unit, with room to spare)
_PEAK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class _Columns:
    save: list[int]
    recompute: list[int]
    keep: list[int]
    peak: int


def _program(
    p: BudgetProblem,
    cap_bytes: int | None,
    minimise: str,
    exclude: list[frozenset[int]],
    restriction: tuple[list[Sequence[int]], list[Sequence[int]], list[Choice]],
    positions: _Positions | None,
    peak_unit: float,
    time_unit: float,
) -> tuple[_Program, _Columns]:
    """The program of ``solve_budget``, with the memory rows of ``positions`` only (None: all)."""
    prog = _Program()
    time_w, peak_w = (1.0, _TIE_WEIGHT) if minimise == "time" else (_TIE_WEIGHT, 1.0)
    save = [prog.var(0, 1 if p.can_save[v] else 0, integer=True) for v in range(p.n)]
    recompute = [
        prog.var(0, 1 if p.can_recompute[v] else 0, cost=time_w * p.cost_s[v] * _TIME_SCALE / time_unit)
        for v in range(p.n)
    ]
    keep = [prog.var(0, 1) for _ in p.group_bytes]
    # memory is expressed in units of peak_unit so every coefficient is O(1) for HiGHS' tolerances
    peak = prog.var(0, math.inf if cap_bytes is None else cap_bytes / peak_unit, cost=peak_w)

    _restrict(prog, p, save, recompute, *restriction)
    for v in p.needed:
        prog.row({save[v]: 1, recompute[v]: 1}, 1, math.inf)
    for v in range(p.n):
        for u in p.inputs[v]:
            terms = {recompute[v]: -1.0}
            _add(terms, save[u], 1)
            _add(terms, recompute[u], 1)
            prog.row(terms, 0, math.inf)
        prog.row({keep[p.group[v]]: 1, save[v]: -1}, 0, math.inf)

    every = positions is None
    _backward_rows(prog, p, keep, recompute, peak, peak_unit, None if every else sorted(positions.backward))
    _forward_rows(prog, p, keep, save, peak, peak_unit, None if every else sorted(positions.forward))
    for saved_set in exclude:  # differ from `saved_set` in at least one save decision
        terms = {save[v]: (-1.0 if v in saved_set else 1.0) for v in range(p.n) if p.can_save[v]}
        prog.row(terms, 1.0 - len(saved_set), math.inf)
    return prog, _Columns(save, recompute, keep, peak)


def _saved(p: BudgetProblem, x: Any, cols: _Columns) -> frozenset[int]:
    return frozenset(v for v in range(p.n) if x[cols.save[v]] > _BINARY_THRESHOLD)


@dataclass
class _Positions:
    """The schedule positions whose memory rows a lazily built program has (module docstring)."""

    forward: set[int] = field(default_factory=set)
    backward: set[int] = field(default_factory=set)

    def add_exceeded(self, forward: list[float], backward: list[float], limit: float) -> bool:
        """Add the positions (the worst ``ROWS_PER_ROUND`` of each phase) whose live bytes are above
        ``limit``; whether there were any."""
        added = False
        for kept, profile in ((self.forward, forward), (self.backward, backward)):
            over = sorted((-live, t) for t, live in enumerate(profile) if live > limit and t not in kept)
            kept.update(t for _, t in over[:ROWS_PER_ROUND])
            added = added or bool(over)
        return added


def _peak_ceiling(p: BudgetProblem) -> float:
    """No plan's model peak exceeds this: the largest base with every storage kept and every
    recomputation live at once (it bounds the tie-breaking term of an uncapped time objective)."""
    extra = sum(p.save_extra_end) if p.save_extra_end else 0
    return (
        max([0, *p.bwd_base, *p.burst_base, *p.fwd_base])
        + sum(p.group_bytes)
        + sum(p.recompute_bytes)
        + extra
    )


@dataclass(frozen=True)
class Choice:
    """The saves of ``members`` follow exactly one of ``patterns`` (each a set of positions in
    ``members`` that are saved)."""

    members: tuple[int, ...]
    patterns: tuple[frozenset[int], ...]


def _restrict(
    prog: _Program,
    p: BudgetProblem,
    save: list[int],
    recompute: list[int],
    tied: Iterable[Sequence[int]],
    tied_recompute: Iterable[Sequence[int]],
    choices: Iterable[Choice],
) -> None:
    for columns, groups in ((save, tied), (recompute, tied_recompute)):
        for group in groups:
            first, *rest = group
            for v in rest:
                prog.row({columns[v]: 1.0, columns[first]: -1.0}, 0, 0)
    for choice in choices:
        allowed = [
            pattern for pattern in choice.patterns if all(p.can_save[choice.members[j]] for j in pattern)
        ]
        picks = [prog.var(0, 1, integer=True) for _ in allowed]
        prog.row(dict.fromkeys(picks, 1.0), 1, 1)
        for j, v in enumerate(choice.members):
            prog.integer[save[v]] = 0  # follows the pick
            terms = {save[v]: 1.0}
            for pick, pattern in zip(picks, allowed, strict=True):
                if j in pattern:
                    terms[pick] = -1.0
            prog.row(terms, 0, 0)


def _backward_rows(
    prog: _Program,
    p: BudgetProblem,
    keep: list[int],
    recompute: list[int],
    peak: int,
    unit: float,
    kept: Sequence[int] | None,
) -> None:
    """Peak rows at the backward positions ``kept`` (ascending; None: all), over running sums of the
    saved and the recomputed bytes live there; the sums step from one kept position to the next. A
    position with a burst before it has a second row, for while the burst runs: one variable, at least
    each of the burst's steps' bytes, on top of what is live before the position's node."""
    positions = len(p.bwd_base)
    kept = range(positions) if kept is None else kept
    if not kept:
        return
    released_at: dict[int, list[int]] = {}
    for g, t in enumerate(p.save_last):
        if t != UNUSED:
            released_at.setdefault(t, []).append(g)
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for v in range(p.n):
        if p.first[v] != UNUSED and p.recompute_bytes[v] > 0 and p.can_recompute[v]:
            starts.setdefault(p.first[v], []).append(v)
            ends.setdefault(p.last[v], []).append(v)
    steps: dict[int, list[tuple[int, ...]]] = {}
    for t, members in p.bursts:
        steps.setdefault(t, []).append(members)
    released: dict[int, list[int]] = {}
    for t, groups in p.burst_released:
        released.setdefault(t, []).extend(groups)
    saved_live = [prog.var(0, math.inf) for _ in kept]
    recomputed_live = [prog.var(0, math.inf) for _ in kept]
    for i, t in enumerate(kept):
        # saved_live at t = saved_live at the next kept position + groups last used in between
        terms = {saved_live[i]: 1.0}
        if i + 1 < len(kept):
            terms[saved_live[i + 1]] = -1.0
        for u in range(t, kept[i + 1] if i + 1 < len(kept) else positions):
            for g in released_at.get(u, ()):
                _add(terms, keep[g], -p.group_bytes[g] / unit)
        prog.row(terms, 0, 0)
        # recomputed_live at t = recomputed_live at the previous kept position + started - ended since
        terms = {recomputed_live[i]: 1.0}
        if i > 0:
            terms[recomputed_live[i - 1]] = -1.0
        for u in range(kept[i - 1] + 1 if i > 0 else 0, t + 1):
            for v in starts.get(u, ()):
                _add(terms, recompute[v], -p.recompute_bytes[v] / unit)
            for v in ends.get(u - 1, ()) if u > 0 else ():
                _add(terms, recompute[v], p.recompute_bytes[v] / unit)
        prog.row(terms, 0, 0)
        row = {saved_live[i]: 1.0, recomputed_live[i]: 1.0, peak: -1.0}
        prog.row(row, -math.inf, -p.bwd_base[t] / unit)
        if t in steps or t in released:  # while the burst before t runs
            row = dict(row)
            if t in steps:  # at least each of its steps' bytes
                burst = prog.var(0, math.inf)
                row[burst] = 1.0
                for members in steps[t]:
                    terms = {burst: 1.0}
                    for v in members:
                        _add(terms, recompute[v], -p.recompute_bytes[v] / unit)
                    prog.row(terms, 0, math.inf)
            for g in released.get(t, ()):
                _add(row, keep[g], p.group_bytes[g] / unit)
            before = p.burst_base[t] if p.burst_base else p.bwd_base[t]
            prog.row(row, -math.inf, -before / unit)


def _forward_rows(
    prog: _Program,
    p: BudgetProblem,
    keep: list[int],
    save: list[int],
    peak: int,
    unit: float,
    kept: Sequence[int] | None,
) -> None:
    """Peak rows at the forward positions ``kept`` (ascending; None: all)."""
    last = len(p.fwd_base) - 1
    released_at: dict[int, list[int]] = {}
    for g, t in enumerate(p.fwd_release):
        released_at.setdefault(t, []).append(g)
    previous: int | None = None
    since = 0
    for t in range(len(p.fwd_base)) if kept is None else kept:
        # kept bytes at t = at the previous kept position + groups whose last forward use came since
        # (saving keeps them after it)
        live = prog.var(0, math.inf)
        terms = {live: 1.0}
        if previous is not None:
            terms[previous] = -1.0
        for u in range(since, t + 1):
            for g in released_at.get(u - 1, ()):
                _add(terms, keep[g], -p.group_bytes[g] / unit)
        prog.row(terms, 0, 0)
        row = {live: 1.0, peak: -1.0}
        if t == last:  # end of the forward: backward-only values it computes to save
            for v, extra in enumerate(p.save_extra_end):
                if extra:
                    _add(row, save[v], extra / unit)
        prog.row(row, -math.inf, -p.fwd_base[t] / unit)
        previous, since = live, t + 1
