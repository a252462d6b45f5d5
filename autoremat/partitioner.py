"""RematPartitioner: the pipeline analyse → cost → solve → rewrite → report, behind Inductor's
partitioner hook (docs/architecture.md, "The pipeline").

Inductor calls it with the joint graph after its joint-graph passes (or AOTAutograd does, on the
codegen-free path). Any internal failure falls back to torch's own partitioner with a logged warning:
a bug in our pass must never stop a user's training run. The only error we raise on purpose is a byte
budget that cannot be met when the user asked for ``strict=True``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import hashlib
import logging
import pathlib
import time
import uuid as uuid_module
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat._version import __version__
from autoremat.cost_models import (
    DEFAULT_MEMORY_MODEL,
    DEFAULT_TIME_MODEL,
    MEMORY_MODELS,
    TIME_MODELS,
    Calibration,
    GraphCosts,
    default_cost_model,
)
from autoremat.cost_models.device_memory import available_bytes
from autoremat.distributed import planning_calibration, world_size
from autoremat.graph.analysis import JointGraphAnalysis, analyse, stable_node_keys
from autoremat.options import RematOptions, inductor_patches
from autoremat.passes.collectives import cse_keeping_collectives
from autoremat.passes.cut import cheap_by
from autoremat.passes.inductor_check import InductorCheck
from autoremat.passes.mincut import solve_min_cut
from autoremat.passes.rewrite import split_joint_graph
from autoremat.passes.search import BudgetTarget, SolveResult, solve, solve_saved
from autoremat.passes.solver import JointGraph, StageClock
from autoremat.plan import Plan, RecomputedOp, record
from autoremat.plan_builder import build_plan

log = logging.getLogger("autoremat")

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
#: under several ranks, "auto" rounds free memory down to this, so ranks with nearly the same free
#: memory plan the same (an explicit byte budget is the way to guarantee it)
AUTO_GRANULARITY_BYTES = 256 * 2**20
#: the memory model plans are checked with (cost_models.MEMORY_MODELS)
MEMORY = MEMORY_MODELS[DEFAULT_MEMORY_MODEL]()


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector's full collections off the objects that existed before the
    partition (the model, the joint graph, torch's own state) while it runs.

    A partition allocates millions of small objects, which triggers full collections, and each one
    walks everything the process holds: on a 29-layer GPT's 4,980-node joint graph three of them
    took 2.1 s of a 17 s partition (with the older objects frozen, 0.5 s). Nothing is leaked:
    garbage made during the partition is still collected, and the older objects are unfrozen on the
    way out. The young generations are collected first, so that recent garbage cycles are not frozen
    (unfrozen, they would wait in the oldest generation for a full collection). Where the process
    froze objects itself (``gc.freeze`` before forking workers), unfreezing would undo that, so
    nothing is done."""
    if not gc.isenabled() or gc.get_freeze_count() > 0:
        yield
        return
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class BudgetInfeasible(ValueError):
    """A byte budget below the least activation memory the graph allows (strict mode only)."""


@functools.cache
def _source_digest() -> str:
    """Hash of the package's own source: any code change must invalidate Inductor's caches."""
    files = tuple(sorted(str(p) for p in _PACKAGE_DIR.rglob("*.py")))
    return compat.get_hash_for_files(files).hex()


class RematPartitioner(compat.CustomPartitionerFn):
    """autoremat's partitioner; one instance per backend configuration.

    Cache identity (``uuid``): package version, source digest, the options fingerprint and the
    calibration data, so a changed budget, device, measurement or line of our code never reuses a stale
    compiled artifact. (The device spec follows from the options and the graph's device, which is part
    of the graph's own cache key.)
    """

    def __init__(self, options: RematOptions, device: torch.device | None = None) -> None:
        self.options = options
        #: None under torch.distributed with several ranks (decisions must not depend on local timings),
        #: or when measuring failed (e.g. out of device memory): then datasheet peaks are used
        self.calibration, self._notes = _calibration_or_datasheet(options, device)
        #: set by the backend before each compile; stamped on plans so they can be stored and found
        self.graph_key = ""
        #: receives the frontier of plans of each graph partitioned, the keys of what the chosen plan
        #: saves and a check of an option's peak under Inductor (``step.py``, a whole-step budget)
        self.frontier_sink: Callable[..., None] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> RematPartitioner:
        """Inductor deep-copies its config, this partitioner included, to key its caches; the
        frontier sink is a callback into the step planner (which holds live tensors) and is shared,
        not copied."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key == "frontier_sink" else copy.deepcopy(value, memo)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """Inductor pickles its config into cache keys: everything but the sink (a callback that
        decides nothing about the compiled code)."""
        return {**self.__dict__, "frontier_sink": None}

    def uuid(self) -> str | None:
        """Inductor's cache identity; None (no caching of this compile) if it cannot be computed, since
        a wrong identity could serve a stale plan and raising would stop the user's compile.

        A step budget's observing compile is never served from a cache (its identity carries a
        one-time nonce): the partitioner would not run, and the step planner would not get the
        graph's frontier of plans."""
        observing = self.frontier_sink is not None and self.options.forced_saved is None
        try:
            cal = self.calibration.fingerprint() if self.calibration else ""
            text = f"autoremat-{__version__}-{_source_digest()}-{self.options.fingerprint()}-{cal}"
            if observing:
                text += f"-observing-{uuid_module.uuid4().hex}"
        except Exception as exc:  # noqa: BLE001 - a cache key must never stop training
            log.warning(
                "autoremat: cannot compute the cache identity (%s: %s); not caching", type(exc).__name__, exc
            )
            return None
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
        clock = StageClock()  # what is timed in no other stage is the partition's own
        try:
            with clock.stage("partition"), _older_objects_frozen():
                fw, bw, plan = self._partition(
                    gm, joint_inputs, num_fwd_outputs, static_lifetime_input_indices, clock
                )
            plan.solver_stats["stage_seconds"] = clock.seconds()
        except BudgetInfeasible:
            raise
        except Exception as exc:  # noqa: BLE001 - any bug of ours must degrade, not crash training
            log.warning(
                "autoremat: partitioning failed (%s: %s); falling back to torch's min-cut partitioner",
                type(exc).__name__,
                exc,
            )
            fw, bw = _fallback_partition(gm, joint_inputs, num_fwd_outputs, static_lifetime_input_indices)
            plan = Plan(
                budget=self.options.budget_label(),
                solver="torch-min-cut",
                status="fallback",
                saved=[],
                saved_bytes=None,
                recomputed=[RecomputedOp(name, "") for name in _shared_op_names(fw, bw)],
                num_joint_nodes=len(gm.graph.nodes),
                partition_seconds=0.0,
                notes=[f"fallback after {type(exc).__name__}: {exc}"],
            )
        plan.partition_seconds = time.perf_counter() - start
        plan.notes.extend(self._notes)
        plan.graph_key = self.graph_key
        try:
            announce(plan)
        except Exception as exc:  # noqa: BLE001 - reporting must never cost the user a correct partition
            log.warning("autoremat: could not report the plan (%s: %s)", type(exc).__name__, exc)
        return fw, bw

    def _partition(
        self,
        gm: fx.GraphModule,
        joint_inputs: Sequence[object],
        num_fwd_outputs: int,
        static_idx: list[int] | None,
        clock: StageClock,
    ) -> tuple[fx.GraphModule, fx.GraphModule, Plan]:
        with clock.stage("analyse"):
            compat.keep_collective_waits_alive()  # DCE must never drop a collective
            gm.graph.eliminate_dead_code()
            gm.recompile()
            if compat.functorch_config.cse:
                gm.graph = cse_keeping_collectives(gm.graph)
                gm.recompile()
            analysis = analyse(
                gm.graph, num_fwd_outputs=num_fwd_outputs, static_lifetime_input_indices=static_idx
            )
            device = _graph_device(gm.graph)
            model = TIME_MODELS[DEFAULT_TIME_MODEL]
            costs = default_cost_model(device, self.options.device, self.calibration, model).for_graph(
                analysis
            )
        if self.options.forced_saved is not None:
            with clock.stage("step plan"):
                solution = self._forced(analysis, costs)
        else:
            joint = JointGraph(gm, joint_inputs, static_idx)
            solution = self._solve(analysis, costs, device, self._check(gm, analysis), joint, clock)
        if self.frontier_sink is not None:
            keys = stable_node_keys(analysis.graph)
            self.frontier_sink(
                solution.frontier, tuple(keys[n] for n in solution.cut.saved), solution.check_option
            )
        with clock.stage("split"):
            fw, bw = split_joint_graph(gm, analysis, solution.cut.saved)
        with clock.stage("plan"):
            plan = build_plan(analysis, costs, solution, budget=self.options.budget_label())
        return fw, bw, plan

    def _forced(self, analysis: JointGraphAnalysis, costs: GraphCosts) -> SolveResult:
        """The plan chosen for the whole step (``options.forced_saved``, by node name). Raises when
        the graph no longer has those nodes; the partitioner then falls back to a correct plan."""
        by_name = {key: n for n, key in stable_node_keys(analysis.graph).items()}
        names = self.options.forced_saved or ()
        missing = [name for name in names if name not in by_name]
        if missing:
            raise RuntimeError(f"the step plan saves {missing[:3]}, which this graph does not have")
        rules = cheap_by(analysis, costs.is_cheap_to_recompute)
        high = solve_min_cut(analysis, rules)
        return solve_saved(
            analysis, costs, MEMORY, [by_name[name] for name in names], high=high, source="step-budget"
        )

    def _check(self, gm: fx.GraphModule, analysis: JointGraphAnalysis) -> InductorCheck | None:
        """The check of plans against Inductor's schedule, when Inductor compiles this graph (the
        codegen-free path runs the op-by-op schedule, which the memory model simulates exactly)."""
        if self.options.compiler != "inductor" or not self.options.inductor_check:
            return None
        return InductorCheck(gm, analysis, inductor_patches(self.options))

    def _solve(
        self,
        analysis: JointGraphAnalysis,
        costs: GraphCosts,
        device: torch.device | None,
        check: InductorCheck | None,
        joint: JointGraph | None,
        clock: StageClock,
    ) -> SolveResult:
        budget = self.options.memory_budget
        with clock.stage("runtime-optimal cut"):
            rules = cheap_by(analysis, costs.is_cheap_to_recompute)
            high = solve_min_cut(analysis, rules)
        notes: list[str] = []
        ranks = world_size()
        if budget.kind == "auto":
            cap = available_bytes(device)
            if ranks > 1:  # free memory is rank-local: coarsen it so that similar ranks agree
                cap -= cap % AUTO_GRANULARITY_BYTES
            notes.append(f"memory_budget='auto' resolved to {cap} bytes available on {device or 'cpu'}")
            target = BudgetTarget(cap_bytes=cap)
        elif budget.kind == "fraction":
            target = BudgetTarget(fraction=float(budget.value))
        else:
            target = BudgetTarget(cap_bytes=int(budget.value))
        solution = solve(
            analysis,
            costs,
            MEMORY,
            target,
            base=rules,
            high=high,
            time_limit=self.options.solver_time_limit,
            solver=self.options.solver,
            deterministic=ranks > 1,
            check=check,
            joint=joint,
            clock=clock,
        )
        solution.notes[:0] = notes
        if not solution.feasible:
            shortfall = (
                f"memory_budget={budget.describe()} is below the least peak activation memory this "
                f"graph allows ({solution.least_bytes} bytes predicted)"
            )
            if self.options.strict:
                raise BudgetInfeasible(
                    f"autoremat (strict=True): {shortfall}; raise the budget to at least that, or pass "
                    "strict=False to train with the least-memory plan and a warning"
                )
            message = f"{shortfall}; using the least-memory plan"
            log.warning("autoremat: %s", message)
            solution.notes.append(message)
        return solution


def _shared_op_names(fw: fx.GraphModule, bw: fx.GraphModule) -> list[str]:
    """Names of forward ops that also appear in the backward: what a plan we did not make (torch's,
    after a fallback) recomputes, as far as its graphs show it. Our own plans know it exactly
    (``JointGraphAnalysis.recomputed``)."""
    fw_names = {n.name for n in fw.graph.nodes if n.op == "call_function"}
    return [n.name for n in bw.graph.nodes if n.op == "call_function" and n.name in fw_names]


def _graph_device(graph: fx.Graph) -> torch.device | None:
    return pick_device(node.meta.get("val") for node in graph.nodes)


#: devices that never hold a step's activations on their own: a CPU scalar or a meta tensor next to
#: CUDA tensors must not make a CUDA graph plan with CPU costs (or "auto" read host RAM)
_HOST_DEVICE_TYPES = ("cpu", "meta")


def pick_device(values: Iterable[object]) -> torch.device | None:
    """The device a graph computes on: the first accelerator device among ``values``' tensors (graphs
    commonly mix a CPU scalar or step counter into CUDA work), else the first tensor's device, else
    None (no tensors)."""
    first: torch.device | None = None
    for value in values:
        if not isinstance(value, torch.Tensor):
            continue
        if value.device.type not in _HOST_DEVICE_TYPES:
            return value.device
        if first is None:
            first = value.device
    return first


def _calibration_or_datasheet(
    options: RematOptions, device: torch.device | None
) -> tuple[Calibration | None, list[str]]:
    """``planning_calibration``, degraded to datasheet peaks if measuring fails: calibration allocates
    about 1 GiB on the device, which can run out of memory on a full device, and a plan with datasheet
    costs is still a correct plan."""
    try:
        return planning_calibration(options, device)
    except Exception as exc:  # noqa: BLE001 - includes torch.OutOfMemoryError
        note = f"calibration failed ({type(exc).__name__}: {exc}); planning with datasheet peaks"
        log.warning("autoremat: %s", note)
        return None, [note]


def _fallback_partition(
    gm: fx.GraphModule,
    joint_inputs: Sequence[object],
    num_fwd_outputs: int,
    static_lifetime_input_indices: list[int] | None,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """torch's min-cut partitioner, without its own CSE (which can merge two identical collectives into
    one; ours keeps them apart), and torch's save-everything partitioner if even that fails."""
    kwargs = {
        "num_fwd_outputs": num_fwd_outputs,
        "static_lifetime_input_indices": static_lifetime_input_indices,
    }
    try:
        if compat.functorch_config.cse:
            gm.graph = cse_keeping_collectives(gm.graph)
            gm.recompile()
        return compat.torch_min_cut_partition_without_cse(gm, joint_inputs, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the last resort below saves everything and cannot be wrong
        log.warning(
            "autoremat: torch's min-cut partitioner failed too (%s: %s); saving every activation",
            type(exc).__name__,
            exc,
        )
        return compat.torch_default_partition(gm, joint_inputs, **kwargs)


def announce(plan: Plan) -> None:
    """Record a plan in this process, log it and emit it as a structured trace artifact."""
    record(plan)
    log.info("%s%s", plan.summary(), " (from cache)" if plan.from_cache else "")
    compat.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": "autoremat_plan", "encoding": "json"},
        payload_fn=plan.to_json,
    )
