"""The ``torch.compile`` entry point: options → Inductor (or the codegen-free path) with our partitioner.

``torch.compile(model, backend="autoremat", options={...})`` resolves through the
``torch_dynamo_backends`` entry point to :func:`autoremat_backend`. Options travel to Inductor as
``config_patches`` rather than a ``with config.patch(...)`` block because Inductor compiles the backward
lazily, on the first backward call, long after any ``with`` block has exited.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat import plan as plan_module
from autoremat import plan_store
from autoremat.options import RematOptions, inductor_patches, resolve_options
from autoremat.partitioner import RematPartitioner, announce, pick_device

CompiledFn = Callable[..., Any]
log = logging.getLogger("autoremat")


def compile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    options: RematOptions,
    *,
    frontier_sink: Callable[..., None] | None = None,
    planner: Any = None,
) -> CompiledFn:
    """Compile one Dynamo graph under ``options``; with a step budget, as one graph of the step
    (``step.py``), which compiles it through here again. ``frontier_sink`` receives the graph's
    frontier of plans and the plan chosen; ``planner`` is the step's (``step.StepPlanner``), by
    default the one shared by every graph compiled with the same options.

    Everything of ours around the compile (building the partitioner, the plan store's key, saving and
    reloading plans) is guarded: a failure there is logged and costs a stored plan, never the user's
    compile. Errors of the compile itself are Inductor's or AOTAutograd's own, and the partitioner
    inside it guards its own work.
    """
    if options.step_budget is not None and frontier_sink is None:
        from autoremat.step import planner_for

        return (planner or planner_for(options)).compile(gm, example_inputs)
    partitioner = RematPartitioner(options, pick_device(example_inputs))
    partitioner.frontier_sink = frontier_sink
    try:
        uuid = partitioner.uuid()
        partitioner.graph_key = plan_store.graph_key(gm, example_inputs, uuid) if uuid is not None else ""
    except Exception as exc:  # noqa: BLE001 - a missing plan record must not stop training
        log.warning(
            "autoremat: cannot key this graph's plans (%s: %s); not storing them", type(exc).__name__, exc
        )
        partitioner.graph_key = ""
    before = plan_module.recorded_count()
    compiled = _compile(gm, example_inputs, options, partitioner)
    if partitioner.graph_key:
        _store_or_replay(partitioner.graph_key, plan_module.recorded_since(before))
    return _watch_sizes(compiled, example_inputs, options)


def _watch_sizes(compiled: CompiledFn, example_inputs: Sequence[Any], options: RematOptions) -> CompiledFn:
    """Warn once if a dynamic size arrives above the one memory was planned at.

    A byte budget (or ``"auto"``) is planned at each size symbol's declared maximum, or, without one,
    at the size seen when compiling (``_torch_compat.planned_size``; the plan's notes say which). A
    larger size reuses the same compiled graphs, and its peak can exceed the budget: the user must
    hear it, once, without paying more than a few integer comparisons per call.
    """
    if options.memory_budget.kind not in ("bytes", "auto"):
        return compiled  # a fraction promises a place between two plans, not a number of bytes
    limits = _planned_size_inputs(example_inputs)
    if not limits:
        return compiled
    warned = False

    def run(*args: Any) -> Any:
        nonlocal warned
        if not warned:
            # called with the inputs, or with one list of them (AOTAutograd's boxed convention)
            values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
            for index, (symbol, planned) in limits.items():
                if index < len(values) and isinstance(values[index], int) and values[index] > planned:
                    warned = True
                    warnings.warn(
                        f"autoremat: size {symbol}={values[index]} is above the {planned} that "
                        f"memory_budget={options.memory_budget.describe()} was planned at; the step's "
                        "peak may exceed the budget (declare a maximum with torch._dynamo.mark_dynamic("
                        "tensor, dim, max=...) to plan for it)",
                        stacklevel=2,
                    )
                    break
        return compiled(*args)

    return functools.update_wrapper(run, compiled)


def _planned_size_inputs(example_inputs: Sequence[Any]) -> dict[int, tuple[str, int]]:
    """Graph inputs that are a bare size symbol (Dynamo passes each dynamic size as one): input index
    → (symbol, the value memory was planned at)."""
    limits: dict[int, tuple[str, int]] = {}
    for index, value in enumerate(example_inputs):
        symbol = compat.bare_size_symbol(value)
        if symbol is not None:
            planned, _ = compat.planned_size(value.node.shape_env, symbol)
            limits[index] = (str(symbol), planned)
    return limits


def _store_or_replay(key: str, made: list[plan_module.Plan]) -> None:
    """Store the plans this compile made; after a cache hit (the partitioner never ran), announce the
    plans stored when the artifact was built."""
    try:
        if made:
            plan_store.save(key, made)
        else:
            for plan in plan_store.load(key):
                announce(plan)
    except Exception as exc:  # noqa: BLE001 - the plan store is a report, not part of the compile
        log.warning("autoremat: plan store failed (%s: %s)", type(exc).__name__, exc)


def _compile(
    gm: fx.GraphModule, example_inputs: Sequence[Any], options: RematOptions, partitioner: RematPartitioner
) -> CompiledFn:
    if options.compiler == "eager":
        return codegen_free_backend(partitioner)(gm, example_inputs)
    patches: dict[str, Any] = {**inductor_patches(options), "custom_partitioner_fn": partitioner}
    return compat.compile_fx(gm, example_inputs, config_patches=patches)


def codegen_free_backend(
    partition_fn: Callable[..., Any], *, eager_random: bool = True
) -> Callable[..., CompiledFn]:
    """AOTAutograd with ``partition_fn`` whose graphs run eagerly (like torch's ``aot_eager``).

    It uses Inductor's decompositions so the partitioner sees the graphs it sees in production; tests
    and benchmarks use it to run torch's partitioners on exactly the same joint graphs as ours. Random
    ops are the exception (``eager_random=True``, the default): they stay undecomposed, so dropout and
    other random ops draw exactly the numbers eager PyTorch draws under the same seed, and the
    codegen-free path is a faithful debugging reference. Inductor decomposes them into ``rand_like``
    comparisons, which draw different numbers (correct, but not eager's); pass ``eager_random=False``
    to reproduce that graph.
    """
    table = compat.eager_random_decomp_table() if eager_random else compat.select_decomp_table()
    return compat.aot_autograd(
        fw_compiler=compat.boxed_nop,
        bw_compiler=compat.boxed_nop,
        partition_fn=partition_fn,
        decompositions=table,
        keep_inference_input_mutations=True,
    )


def autoremat_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> CompiledFn:
    """What ``torch.compile(..., backend="autoremat")`` calls (registered as an entry point)."""
    return compile_graph(gm, example_inputs, resolve_options(options, mode=mode))


class RematBackend:
    """A configured backend callable: ``torch.compile(model, backend=autoremat.backend(...))``.

    Options are validated when it is built, so mistakes surface at the call site.
    """

    __name__ = "autoremat"

    def __init__(self, options: RematOptions) -> None:
        self.options = options
        #: with a step budget, the graphs this backend compiles are one step (``step.py``)
        self._planner: Any = None

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> CompiledFn:
        if kwargs.get("options") or kwargs.get("mode"):
            raise ValueError(
                "autoremat.backend(...) is already configured; pass options to autoremat.backend(), "
                "not to torch.compile(options=...)"
            )
        if self.options.step_budget is not None and self._planner is None:
            from autoremat.step import StepPlanner

            self._planner = StepPlanner(self.options)
        return compile_graph(gm, example_inputs, self.options, planner=self._planner)

    def __repr__(self) -> str:
        return f"autoremat.backend({self.options})"


def backend(**options: Any) -> RematBackend:
    """A validated backend; raises ValueError for bad options (see README for the list)."""
    return RematBackend(resolve_options(options))
