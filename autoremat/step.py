"""One budget for the whole training step (docs/architecture.md, "Step budget").

``options={"step_budget": "70GiB"}`` (or ``AUTOREMAT_STEP_BUDGET``) caps the step's peak: parameters,
gradients and optimizer state, the activations every compiled graph of the step keeps for its
backward, all live at once, and the transient peak of the graph whose backward runs. The graphs of
a step are compiled one at a time, each before the next is even traced, and the optimizer's state
does not exist before its first step, so the step is planned from one observed step:

1. **Observe.** Each graph compiles with its least-peak plan (a safe start: not the step's least
   peak, which depends on how often each graph runs, but close to it) and hands over its frontier
   of plans (end-of-forward bytes, peak, recompute time, ``passes/step_allocation.py``). Its calls
   in the first forward give the step's sequence: which graph runs where, how often (one graph per
   block runs once per block), and which inputs came from outside the compiled graphs (an
   embedding's output, FSDP2's unsharded parameters of the block in flight). The first optimizer
   step gives parameters, gradients and optimizer state (``cost_models/optimizer_memory.py``).
2. **Plan.** At the first compiled call after that, one plan per graph is chosen with the least
   predicted recompute time of the step whose predicted peak fits the budget, and every graph whose
   plan changes is compiled again with it, when next called. Compile time is paid once more for
   those graphs; training runs on unchanged from the user's side.

Graphs compiled with the same options form one step. A compile of a new graph after planning (a
recompilation, a new input shape) starts observing again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autoremat import _torch_compat as compat
from autoremat.cost_models.device_memory import available_bytes
from autoremat.cost_models.optimizer_memory import StaticMemory, local_tensor, static_memory
from autoremat.distributed import world_size
from autoremat.options import MemoryBudget, RematOptions
from autoremat.passes.step_allocation import Allocation, StepOption, allocate, fastest

log = logging.getLogger("autoremat")

CompiledFn = Callable[..., Any]


class StepBudgetInfeasible(ValueError):
    """A step budget below the least step peak the plans allow (strict mode only)."""


@dataclass
class RegionChoice:
    """What the step plan chose for one compiled graph."""

    region: int
    runs: int
    option: StepOption
    #: whether the graph is compiled again for it (its observed plan was another)
    recompiled: bool


@dataclass
class StepPlan:
    """The plan for a whole step: the budget, what the step is predicted to hold, each graph's plan."""

    budget: str
    cap_bytes: int
    status: str  # "within-budget" | "budget-infeasible"
    predicted_peak_bytes: int
    least_peak_bytes: int
    runtime_optimal_peak_bytes: int
    static: StaticMemory
    #: the step's activation peak, and the part of it held outside the compiled graphs (their inputs
    #: from eager code, FSDP2's unsharded parameters)
    activation_peak_bytes: int
    outside_bytes: int
    predicted_recompute_s: float
    regions: list[RegionChoice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(
            f"graph {c.region} x{c.runs}: end {c.option.end_bytes} peak {c.option.peak_bytes}"
            for c in self.regions
        )
        return (
            f"autoremat step plan [{self.status}] step_budget={self.budget} ({self.cap_bytes} bytes): "
            f"predicted step peak {self.predicted_peak_bytes} bytes; the step holds "
            f"{self.static.describe()}; activations and the gradients made by then "
            f"{self.activation_peak_bytes} at their peak (up to {self.outside_bytes} of them outside "
            f"the compiled graphs); least step peak {self.least_peak_bytes}, runtime-optimal "
            f"{self.runtime_optimal_peak_bytes}; recompute +{self.predicted_recompute_s * 1e3:.3f} ms "
            f"per step; {parts}"
        )


_RECENT: list[StepPlan] = []


def step_plans() -> list[StepPlan]:
    """The step plans made in this process, oldest first."""
    return list(_RECENT)


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    t = local_tensor(t)
    return (str(t.device), t.untyped_storage().data_ptr())


def _storage_nbytes(t: torch.Tensor) -> int:
    return int(local_tensor(t).untyped_storage().nbytes())


class Region:
    """One compiled graph of the step: compiled now with its least-memory plan, again later if the
    step plan chooses another."""

    def __init__(self, planner: StepPlanner, index: int, gm: Any, example_inputs: Sequence[Any]) -> None:
        self.planner, self.index = planner, index
        # compiled again later from the same graph and example inputs, under the same tracing context
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.context = compat.current_tracing_context()
        self.frontier: list[StepOption] = []
        self.saved: tuple[str, ...] | None = None
        #: checks an option's peaks against Inductor's schedule (None on the codegen-free path)
        self.check: Callable[[StepOption], StepOption | None] | None = None
        self.pending: tuple[str, ...] | None = None
        observe = dataclasses.replace(planner.options, memory_budget=MemoryBudget("fraction", 0.0))
        self.compiled = self._compile(gm, self.example_inputs, observe)

    def _receive(
        self,
        frontier: list[StepOption],
        saved: tuple[str, ...],
        check: Callable[[StepOption], StepOption | None] | None = None,
    ) -> None:
        if frontier:  # a compile with the step's chosen plan reports no frontier of its own
            self.frontier, self.saved, self.check = frontier, saved, check

    def _compile(self, gm: Any, example_inputs: list[Any], options: RematOptions) -> CompiledFn:
        from autoremat.backend import compile_graph

        return compile_graph(gm, example_inputs, options, frontier_sink=self._receive)

    def recompile(self) -> None:
        """Compile again with the plan the step chose (``pending``), under Dynamo's tracing context
        of the first compile."""
        names, self.pending = self.pending, None
        options = dataclasses.replace(self.planner.options, forced_saved=names)
        with compat.tracing(self.context):
            self.compiled = self._compile(self.gm, list(self.example_inputs), options)
        self.saved = names

    def __call__(self, *args: Any) -> Any:
        planner = self.planner
        if planner.ready_to_plan():
            planner.plan()
        if self.pending is not None:
            self.recompile()
        # AOTAutograd's boxed convention passes one list, which the callee empties
        values = list(args[0]) if len(args) == 1 and isinstance(args[0], list) else list(args)
        watching = planner.observing and not planner.backward_seen and torch.is_grad_enabled()
        if watching:
            planner.observe_inputs(self, values)
        out = self.compiled(*args)
        if watching:
            planner.observe_outputs(out)
        return out


#: forwards after the first backward that a planner waits for an optimizer step before planning
#: without one
PATIENCE = 16
#: the most plans one step plan checks against Inductor's schedule (about a second each)
MAX_STEP_CHECKS = 6

_PLANNERS: weakref.WeakSet[StepPlanner] = weakref.WeakSet()
_HOOK: Any = None


def _on_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Global post-step hook: every observing planner learns the step's static memory now, while
    the gradients still exist."""
    for planner in list(_PLANNERS):
        planner.saw_optimizer_step(optimizer)


def _ensure_hook() -> None:
    global _HOOK
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _HOOK = register_optimizer_step_post_hook(_on_optimizer_step)


class StepPlanner:
    """The graphs of one step and their joint plan (module docstring)."""

    def __init__(self, options: RematOptions) -> None:
        if options.step_budget is None:
            raise ValueError("a StepPlanner needs options with a step_budget")
        self.options = options
        self.regions: list[Region] = []
        self._restart()
        _PLANNERS.add(self)
        _ensure_hook()

    def _restart(self) -> None:
        self.observing, self.backward_seen = True, False
        #: region index per compiled call of the observed forward, in order
        self.sequence: list[int] = []
        #: per call: bytes of its inputs no earlier call produced (eager activations), first seen
        self.external: list[int] = []
        #: per call: its parameters' storages (to tell FSDP2's unsharded copies from what the
        #: optimizer holds)
        self.param_storages: list[dict[tuple[str, int], int]] = []
        self._produced: set[tuple[str, int]] = set()
        #: per call: the storages of its tensor inputs, and of its outputs with their bytes
        self.inputs: list[set[tuple[str, int]]] = []
        self.outputs: list[dict[tuple[str, int], int]] = []
        self._seen_inputs: set[tuple[str, int]] = set()
        self.optimizers: list[weakref.ref[torch.optim.Optimizer]] = []
        self.static: StaticMemory | None = None
        self.grads: dict[tuple[str, int], int] = {}
        self._calls_after_backward = 0
        self.device: torch.device | None = None

    def compile(self, gm: Any, example_inputs: Sequence[Any]) -> CompiledFn:
        if not self.observing:
            log.info("autoremat: a new graph joined a planned step; observing the step again")
            self._restart()
        region = Region(self, len(self.regions), gm, example_inputs)
        self.regions.append(region)
        for value in example_inputs:
            if isinstance(value, torch.Tensor) and self.device is None and value.device.type != "cpu":
                self.device = value.device

        def run(*args: Any) -> Any:
            return region(*args)

        # keep the compiled function's calling convention (AOTAutograd's ``_boxed_call``)
        return functools.update_wrapper(run, region.compiled)

    # -- observing -----------------------------------------------------------------------------

    def observe_inputs(self, region: Region, values: Sequence[Any]) -> None:
        self.sequence.append(region.index)
        external, params, inputs = 0, {}, set()
        for value in values:
            if not isinstance(value, torch.Tensor) or value.device.type == "meta":
                continue
            key = _storage_key(value)
            inputs.add(key)
            if isinstance(value, torch.nn.Parameter):
                params[key] = _storage_nbytes(value)
            elif key not in self._produced and key not in self._seen_inputs and value.requires_grad:
                external += _storage_nbytes(value)
            self._seen_inputs.add(key)
        self.external.append(external)
        self.param_storages.append(params)
        self.inputs.append(inputs)

    def observe_outputs(self, out: Any) -> None:
        hooked, outputs = False, {}
        for value in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(value, torch.Tensor):
                self._produced.add(_storage_key(value))
                outputs[_storage_key(value)] = _storage_nbytes(value)
                if not hooked and value.requires_grad:
                    value.register_hook(self._backward_started)
                    hooked = True
        self.outputs.append(outputs)

    def _backward_started(self, grad: torch.Tensor) -> None:
        self.backward_seen = True

    def saw_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.observing or not self.sequence:
            return
        if all(ref() is not optimizer for ref in self.optimizers):
            self.optimizers.append(weakref.ref(optimizer))
        optimizers = [o for ref in self.optimizers if (o := ref()) is not None]
        self.static = static_memory(optimizers)
        # each parameter's gradient, by the parameter's storage: a graph's parameters' gradients
        # exist only from its backward on (``zero_grad(set_to_none=True)``, the default)
        self.grads = {
            _storage_key(p): _storage_nbytes(p.grad)
            for o in optimizers
            for group in o.param_groups
            for p in group["params"]
            if p.grad is not None
        }

    def ready_to_plan(self) -> bool:
        """After an observed forward, backward and optimizer step (gradient accumulation runs more
        forwards before the optimizer steps); with no optimizer step in ``PATIENCE`` forwards, the
        training loop updates the weights itself, and the step is planned without one."""
        if not (self.observing and self.backward_seen and self.sequence):
            return False
        self._calls_after_backward += 1
        return self.static is not None or self._calls_after_backward > PATIENCE * len(self.sequence)

    # -- planning ------------------------------------------------------------------------------

    def plan(self) -> StepPlan:
        self.observing = False
        notes: list[str] = []
        static = self.static
        if static is None:
            params: dict[tuple[str, int], int] = {}
            for seen in self.param_storages:
                params.update(seen)
            static = StaticMemory(parameters=sum(params.values()))
            notes.append(
                f"no optimizer step was seen in {PATIENCE} forwards after the first backward: gradients and "
                "optimizer state are not counted"
            )
        regions = sorted(set(self.sequence))
        local = {r: i for i, r in enumerate(regions)}
        frontiers = [self.regions[r].frontier or self._fallback_frontier(r, notes) for r in regions]
        sequence = [local[r] for r in self.sequence]
        extra, attributed, outside = self._outside_and_gradients(static)
        released = self._released()
        held, held_forward, scratch = self._agreed(static, attributed)
        cap = self._cap(held, held_forward, scratch, frontiers, sequence, extra, released)
        allocation = self._allocate_checked(regions, frontiers, sequence, cap - held_forward, extra, released)
        least = allocate(frontiers, sequence, None, extra, released)
        high = fastest(frontiers, sequence, extra, released)
        status = "within-budget"
        if allocation.status in ("infeasible", "least") or held + scratch > cap:
            status = "budget-infeasible"
        plan = StepPlan(
            budget=self.options.step_budget.describe(),
            cap_bytes=cap,
            status=status,
            predicted_peak_bytes=max(held_forward + allocation.activation_peak_bytes, held + scratch),
            least_peak_bytes=max(held_forward + least.activation_peak_bytes, held + scratch),
            runtime_optimal_peak_bytes=max(held_forward + high.activation_peak_bytes, held + scratch),
            static=dataclasses.replace(static, optimizer_scratch=scratch),
            activation_peak_bytes=allocation.activation_peak_bytes,
            outside_bytes=outside,
            predicted_recompute_s=allocation.time_s,
            notes=notes,
        )
        self._apply(regions, frontiers, sequence, allocation, plan)
        if status == "budget-infeasible":
            self._infeasible(plan, least)
        _RECENT.append(plan)
        log.info("%s", plan.summary())
        return plan

    def _allocate_checked(
        self,
        regions: list[int],
        frontiers: list[list[StepOption]],
        sequence: list[int],
        cap: int,
        extra: list[int],
        released: list[int],
    ) -> Allocation:
        """The allocation, its choices checked against Inductor's schedule where their peaks were
        only estimated (``frontiers`` is updated with the checked peaks), allocated again until every
        choice is checked or ``MAX_STEP_CHECKS`` checks were made."""
        checks = 0
        while True:
            allocation = allocate(frontiers, sequence, cap, extra, released)
            unchecked = [
                i
                for i, options in enumerate(frontiers)
                if not options[allocation.choice[i]].checked and self.regions[regions[i]].check is not None
            ]
            if not unchecked or checks >= MAX_STEP_CHECKS:
                return allocation
            for i in unchecked:
                checked = self.regions[regions[i]].check(frontiers[i][allocation.choice[i]])
                checks += 1
                if checked is None:  # the check failed: this region plans with its estimates
                    self.regions[regions[i]].check = None
                    continue
                frontiers[i][allocation.choice[i]] = checked

    def _released(self) -> list[int]:
        """Per call: bytes of its outputs that later calls took as inputs. A later call's backward
        runs first and releases them, so they are not live in this call's backward (unless this
        call's plan saves them, ``StepOption.releasable_bytes``)."""
        later: set[tuple[str, int]] = set()
        released = [0] * len(self.outputs)
        for k in range(len(self.outputs) - 1, -1, -1):
            released[k] = sum(n for key, n in self.outputs[k].items() if key in later)
            later |= self.inputs[k]
        return released

    def _outside_and_gradients(self, static: StaticMemory) -> tuple[list[int], int, int]:
        """(per call of the observed forward: the bytes no plan changes while its backward runs, the
        gradients attributed to the graphs' calls, the most held outside the compiled graphs at any
        call): inputs from eager code (live from that call on), FSDP2's unsharded parameters of the
        call (parameters the optimizer does not hold), and the gradients of the calls after it,
        which their backward, run before this one, made."""
        held_keys = self._optimizer_storages()
        seen: set[tuple[str, int]] = set()
        own_grads = []
        for params in self.param_storages:
            fresh = [k for k in params if k not in seen]
            seen.update(fresh)
            own_grads.append(sum(self.grads.get(k, 0) for k in fresh))
        extra, outside, running = [], 0, 0
        for k, params in enumerate(self.param_storages):
            running += self.external[k]
            in_flight = (
                sum(n for key, n in params.items() if key not in held_keys) if static.parameters else 0
            )
            extra.append(running + in_flight + sum(own_grads[k + 1 :]))
            outside = max(outside, running + in_flight)
        return extra, sum(own_grads), outside

    def _optimizer_storages(self) -> set[tuple[str, int]]:
        keys: set[tuple[str, int]] = set()
        for ref in self.optimizers:
            optimizer = ref()
            if optimizer is not None:
                for group in optimizer.param_groups:
                    keys.update(_storage_key(p) for p in group["params"])
        return keys

    def _fallback_frontier(self, region: int, notes: list[str]) -> list[StepOption]:
        notes.append(f"graph {region} reported no plans (its partitioning fell back); counted as zero")
        return [StepOption((), 0, 0, 0.0)]

    def _agreed(self, static: StaticMemory, attributed: int) -> tuple[int, int, int]:
        """(held through the optimizer step, held while the graphs run, the optimizer's scratch),
        the largest over ranks: every rank must choose the same plans (``distributed.py``), and the
        most loaded rank is the one that runs out. While the graphs run, the gradients their
        backward makes are not held yet; they are counted per call (``_outside_and_gradients``)."""
        values = [static.held, static.held - attributed, static.optimizer_scratch]
        if world_size() > 1:
            values = _all_reduce_max(values)
        return values[0], values[1], values[2]

    def _cap(
        self,
        held: int,
        held_forward: int,
        scratch: int,
        frontiers: list[list[StepOption]],
        sequence: list[int],
        extra: list[int],
        released: list[int],
    ) -> int:
        budget = self.options.step_budget
        if budget.kind == "bytes":
            return int(budget.value)
        if budget.kind == "auto":
            # what the device can give the step: its free memory plus what the step holds of it
            # now (gradients set to None by zero_grad are free memory already)
            optimizers = [o for ref in self.optimizers if (o := ref()) is not None]
            free = available_bytes(self.device) + static_memory(optimizers).held
            if world_size() > 1:
                free = -_all_reduce_max([-free])[0]
            return free
        least = allocate(frontiers, sequence, None, extra, released).activation_peak_bytes
        high = fastest(frontiers, sequence, extra, released).activation_peak_bytes
        least, high = (max(held_forward + a, held + scratch) for a in (least, high))
        return int(least + float(budget.value) * (high - least))

    def _apply(
        self,
        regions: list[int],
        frontiers: list[list[StepOption]],
        sequence: list[int],
        allocation: Allocation,
        plan: StepPlan,
    ) -> None:
        runs = [sequence.count(i) for i in range(len(regions))]
        for i, region_index in enumerate(regions):
            region = self.regions[region_index]
            option = frontiers[i][allocation.choice[i]]
            change = bool(option.saved) and option.saved != region.saved
            if change:
                region.pending = option.saved
            plan.regions.append(RegionChoice(region_index, runs[i], option, change))

    def _infeasible(self, plan: StepPlan, least: Allocation) -> None:
        message = (
            f"step_budget={plan.budget} ({plan.cap_bytes} bytes) is below the least step peak the plans "
            f"allow: {plan.least_peak_bytes} bytes predicted, of {plan.static.describe()}, and "
            f"activations and the gradients made by then {least.activation_peak_bytes} at their least "
            f"peak (up to {plan.outside_bytes} of them outside the compiled graphs)"
        )
        if self.options.strict:
            raise StepBudgetInfeasible(
                f"autoremat (strict=True): {message}; raise the budget to at least that, or pass "
                "strict=False to train with the least-memory plans and a warning"
            )
        message += "; using the least-memory plans"
        log.warning("autoremat: %s", message)
        plan.notes.append(message)


def _all_reduce_max(values: list[int]) -> list[int]:
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


_BY_OPTIONS: dict[str, StepPlanner] = {}


def planner_for(options: RematOptions) -> StepPlanner:
    """The planner of the step that graphs compiled with ``options`` belong to."""
    key = options.fingerprint()
    planner = _BY_OPTIONS.get(key)
    if planner is None:
        planner = _BY_OPTIONS[key] = StepPlanner(options)
    return planner
