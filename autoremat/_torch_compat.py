"""Every private torch API autoremat touches, imported in one place.

Why a single module: torch's partitioner internals move between releases (we support torch >= 2.11 and
develop against 2.13). When an import or a signature changes, this is the only file to edit, and each
shim below says what differs between versions. Nothing outside this module imports ``torch._*``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._dynamo.backends.common import aot_autograd
from torch._functorch import config as functorch_config
from torch._functorch._aot_autograd.utils import (
    _is_bwd_seed_offset,
    _is_fwd_seed_offset,
    _is_primal,
    _is_tangent,
    is_with_effects,
)
from torch._functorch.aot_autograd import make_boxed_func
from torch._functorch.compile_utils import fx_graph_cse, raise_getitems
from torch._functorch.partitioners import (
    _extract_fwd_bwd_modules,
    min_cut_rematerialization_partition,
    reordering_to_mimic_autograd_engine,
)
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomPartitionerFn, get_hash_for_files
from torch._inductor.decomposition import select_decomp_table
from torch._logging import trace_structured
from torch.fx.experimental.proxy_tensor import is_sym_node, py_sym_types
from torch.utils._sympy.symbol import SymT, symbol_is_type
from torch.utils.checkpoint import CheckpointPolicy

try:  # torch >= 2.12 renamed hint_int to optimization_hint.
    from torch.fx.experimental.symbolic_shapes import optimization_hint as _hint
except ImportError:  # pragma: no cover - torch 2.11
    from torch.fx.experimental.symbolic_shapes import hint_int as _hint

try:  # graph-safe RNG threading for HOP bodies appeared after 2.11.
    from torch._functorch.partitioners import thread_graphsafe_rng_from_hops
except ImportError:  # pragma: no cover - torch 2.11
    thread_graphsafe_rng_from_hops = None

try:  # boxed FX codegen (clears the argument list so inputs die at their last use); torch >= 2.11
    from torch.fx.graph import _BoxedCodeGen
except ImportError:  # pragma: no cover - older torch
    _BoxedCodeGen = None

try:
    from torch._functorch._aot_autograd.graph_compile import is_opaque_node
except ImportError:  # pragma: no cover - older layout

    def is_opaque_node(node: Any) -> bool:
        return False


__all__ = [
    "CheckpointPolicy",
    "CustomPartitionerFn",
    "aot_autograd",
    "bare_size_symbol",
    "boxed_nop",
    "collective_namespace",
    "compile_fx",
    "eager_random_decomp_table",
    "extract_fwd_bwd_modules",
    "functorch_config",
    "fx_graph_cse",
    "get_hash_for_files",
    "graph_symbol_hints",
    "planned_int",
    "planned_size",
    "planned_sizes",
    "inductor_cache_dir",
    "inductor_config",
    "inductor_mode_names",
    "inductor_memory_plan",
    "inductor_layout_optimisation",
    "carried_thread_state",
    "inductor_peak_patches",
    "MemoryEvent",
    "TensorLayout",
    "fw_donated_buffer_idxs",
    "inductor_mode_options",
    "is_bwd_seed_offset",
    "is_fwd_seed_offset",
    "is_higher_order_op",
    "is_op_overload",
    "is_opaque_node",
    "is_primal",
    "is_sym_node",
    "is_tangent",
    "is_with_effects",
    "keep_collective_waits_alive",
    "partitioner_tag",
    "polish_partitioned_modules",
    "profiler_memory_events",
    "py_sym_types",
    "select_decomp_table",
    "torch_default_partition",
    "torch_min_cut_partition",
    "torch_min_cut_partition_without_cse",
    "trace_structured",
    "arg_tree_leaves",
    "tree_leaves",
    "tree_map",
]

is_primal = _is_primal
is_tangent = _is_tangent
is_fwd_seed_offset = _is_fwd_seed_offset
is_bwd_seed_offset = _is_bwd_seed_offset
torch_min_cut_partition = min_cut_rematerialization_partition
#: pytree helpers (torch has no public pytree module in the versions we support)
tree_leaves = pytree.tree_leaves
arg_tree_leaves = pytree.arg_tree_leaves
tree_map = pytree.tree_map

#: Namespace of functional collectives: never recomputed unless the user tagged them.
collective_namespace = "_c10d_functional"


def _backed_hints(shape_env: Any) -> dict[Any, Any]:
    """Hints of the backed symbols (torch 2.13 renamed ``var_to_val`` to ``backed_var_to_val``)."""
    hints = getattr(shape_env, "backed_var_to_val", None)
    return shape_env.var_to_val if hints is None else hints


def _is_unbacked(symbol: Any) -> bool:
    """Whether ``symbol`` is an unbacked integer (``u0``: a size from ``nonzero``, an ``.item()``...)."""
    return symbol_is_type(symbol, SymT.UNBACKED_INT)


def unbacked_bound(shape_env: Any, symbol: Any) -> tuple[int, str]:
    """The value autoremat plans an unbacked symbol at, and where it comes from.

    An unbacked size has no hint: it is known only when the graph runs. Planning at a value below the
    real one would under-count memory, so we plan at the symbol's upper bound from the shape
    environment's value range when it is finite (``nonzero`` of ``n`` elements: ``n``). Otherwise no
    bound exists (``.item()`` without ``torch._check``), and we use the size Inductor itself assumes
    for unbacked symbols (``torch._inductor.config.unbacked_symint_fallback``), raised to the range's
    lower bound. Both are named in the plan's notes (``planned_sizes``).
    """
    value_range = shape_env.var_to_range.get(symbol)
    # an infinite end of a range is torch's int_oo, which is a sympy Number but not an Integer
    upper = getattr(value_range, "upper", None)
    lower = getattr(value_range, "lower", None)
    if isinstance(upper, (int, sympy.Integer)):
        return int(upper), f"its upper bound {int(upper)} (the shape environment's value range)"
    fallback = int(inductor_config.unbacked_symint_fallback)
    if isinstance(lower, (int, sympy.Integer)):
        fallback = max(fallback, int(lower))
    return fallback, (
        f"{fallback}: it has no finite upper bound, so the size Inductor assumes for unbacked symbols "
        "(torch._inductor.config.unbacked_symint_fallback)"
    )


def _finite(bound: Any) -> int | None:
    """An end of a value range as an int, or None when it is infinite (torch's ``int_oo``, a sympy
    Number that is not an Integer)."""
    return int(bound) if isinstance(bound, (int, sympy.Integer)) else None


def planned_size(shape_env: Any, symbol: Any) -> tuple[int, str]:
    """The value autoremat plans memory at for one size symbol, and why (for the plan's notes).

    Memory is planned at the largest size the graph can see, so that a byte budget holds for every
    size the compiled graph serves: a backed symbol with a declared finite maximum
    (``torch._dynamo.mark_dynamic(x, dim, max=N)``, or a guard such as ``s0 <= N``) is planned at that
    maximum; one without a maximum at its hint (the size seen when compiling: the plan says so, and
    the backend warns once when a larger size arrives); an unbacked one at ``unbacked_bound``.
    """
    if _is_unbacked(symbol):
        return unbacked_bound(shape_env, symbol)
    hint = int(_backed_hints(shape_env)[symbol])
    value_range = shape_env.var_to_range.get(symbol)
    upper = _finite(getattr(value_range, "upper", None))
    if upper is not None and upper > hint:
        return upper, f"its declared maximum {upper} (hint {hint})"
    if upper is not None:
        return hint, f"{hint}, its only value"
    return hint, f"its hint {hint}: no maximum was declared, so larger sizes exceed what was planned"


def _planned_value(shape_env: Any, expr: Any) -> int:
    """``expr`` with every symbol at ``planned_size``."""
    expr = sympy.sympify(expr).xreplace(shape_env.replacements)
    values = {s: sympy.Integer(planned_size(shape_env, s)[0]) for s in expr.free_symbols}
    return int(expr.xreplace(values))


def planned_int(value: Any, fallback: int = 4096) -> int:
    """Concrete value of a possibly symbolic size for memory planning (``planned_size`` for each
    symbol), never guarding. ``fallback`` is for a value with no shape environment to ask (torch's own
    partitioner assumes 4096 there)."""
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        node = value.node
        try:
            return _planned_value(node.shape_env, node.expr)
        except (KeyError, TypeError, AttributeError):  # a symbol the shape env cannot place: hint it
            pass
    return int(_hint(value, fallback=fallback))


def keep_collective_waits_alive() -> None:
    """Make FX's dead-code elimination keep functional-collective waits (and so their collectives).

    Functional collectives are pure in FX's eyes; only ``wait_tensor`` is registered as side-effectful,
    and torch does that when ``torch.distributed._functional_collectives`` is imported (2.11-2.13:
    ``torch.fx.node.has_side_effect``), not when the C++ ops are. A graph can hold ``_c10d_functional``
    ops without that import having happened; then both our DCE and the one inside torch's extraction
    helper would delete a wait whose value is unused, and its collective with it. Idempotent and cheap.
    """
    if not torch.distributed.is_available():
        return
    torch.fx.node.has_side_effect(torch.ops._c10d_functional.wait_tensor.default)


def partitioner_tag(node: fx.Node) -> str | None:
    """AOTAutograd's placement tag (is_forward / is_backward / must_be_in_*), if any."""
    return node.meta.get("partitioner_tag")


def inductor_mode_options(mode: str | None) -> dict[str, Any]:
    """Inductor config patches for a ``torch.compile`` mode string (``None`` → none)."""
    if mode is None or mode == "default":
        return {}
    from torch._inductor import list_mode_options

    return dict(list_mode_options(mode))


#: Inductor settings that make the peak follow the plan (docs/architecture.md, "Memory under
#: Inductor"): with buffer reuse on, a freed buffer is held until a later kernel needs one of the same
#: size, which kept 0.5-1 MiB of dead buffers alive at the backward's peak of the quick suite and made
#: the measured peak rise as the budget fell; off, every suite model's peak falls with the budget
#: (within 2%) and is lower at every budget. The allocator (CPU, or CUDA's caching allocator) still
#: reuses the freed memory.
_PEAK_FOLLOWS_PLAN = {"allow_buffer_reuse": False}


def inductor_peak_patches() -> dict[str, Any]:
    """Inductor config patches that keep the measured peak following the plan, limited to the keys
    this torch has (2.11-2.13 have them all); a missing one is skipped with a debug note."""
    patches = {}
    for key, value in _PEAK_FOLLOWS_PLAN.items():
        if hasattr(inductor_config, key):
            patches[key] = value
        else:
            logging.getLogger("autoremat").debug("autoremat: this torch has no inductor config %s", key)
    return patches


def inductor_mode_names() -> tuple[str, ...]:
    """Accepted ``mode=`` strings, as torch defines them."""
    from torch._inductor import list_mode_options

    return ("default", *sorted(m for m in list_mode_options() if m != "default"))


_EXTRACT_PARAMS = frozenset(inspect.signature(_extract_fwd_bwd_modules).parameters)


def extract_fwd_bwd_modules(
    joint_module: fx.GraphModule,
    saved_values: list[fx.Node],
    saved_sym_nodes: list[fx.Node],
    saved_opaque_nodes: list[fx.Node],
    *,
    num_fwd_outputs: int,
    static_lifetime_input_nodes: Sequence[fx.Node],
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split the joint graph given the saved set, honouring AOTAutograd's output contract.

    torch 2.11 has no ``saved_opaque_nodes`` parameter; there opaque nodes never occur.
    """
    from torch.utils._ordered_set import OrderedSet

    kwargs: dict[str, Any] = {
        "num_fwd_outputs": num_fwd_outputs,
        "static_lifetime_input_nodes": OrderedSet(static_lifetime_input_nodes),
    }
    if "saved_opaque_nodes" in _EXTRACT_PARAMS:
        kwargs["saved_opaque_nodes"] = saved_opaque_nodes
    return _extract_fwd_bwd_modules(joint_module, saved_values, saved_sym_nodes, **kwargs)


def polish_partitioned_modules(
    fw_module: fx.GraphModule, bw_module: fx.GraphModule
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """torch's post-split hygiene: backward in autograd-engine order, getitems hoisted, HOP RNG threaded.

    These change scheduling only, never which values are saved, so reusing torch's passes keeps our
    graphs shaped like the ones Inductor is tuned for.
    """
    bw_module = reordering_to_mimic_autograd_engine(bw_module)
    fw_module = raise_getitems(fw_module)
    bw_module = raise_getitems(bw_module)
    if thread_graphsafe_rng_from_hops is not None:
        fw_module = thread_graphsafe_rng_from_hops(fw_module, is_backward=False)
        bw_module = thread_graphsafe_rng_from_hops(bw_module, is_backward=True)
    return fw_module, bw_module


def is_higher_order_op(target: Any) -> bool:
    return isinstance(target, torch._ops.HigherOrderOperator)


def is_op_overload(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload)


def boxed_nop(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """A 'compiler' that runs the graph as is (the codegen-free path).

    With boxed codegen the generated code clears its argument list, so each input (saved activations
    in the backward) is freed after its last use, as in Inductor's code: the codegen-free path then has
    the memory behaviour the liveness model predicts, not "every saved tensor lives to the end".
    """
    if _BoxedCodeGen is None:  # pragma: no cover - older torch: inputs live to the end of the graph
        return make_boxed_func(gm.forward)
    gm.graph.set_codegen(_BoxedCodeGen())
    gm.recompile()
    forward = gm.forward

    def run(args: list[Any]) -> Any:
        return forward(args)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run


def _native_dropout_as_eager_cpu(input: torch.Tensor, p: float, train: bool | None) -> Any:
    """``native_dropout`` the way eager's CPU kernel computes it (ATen ``native_dropout_cpu``): one
    ``bernoulli`` draw of the input's shape, then ``input * mask * scale``.

    The draw is a single-output random op, which the partitioner saves like any other; kept as the
    two-output ``native_dropout``, a recompute tag on it would reach its ``getitem`` outputs too.
    Elsewhere (CUDA's fused philox kernel, evaluation, p == 0) the op is kept as it is (NotImplemented
    tells the tracer to record it undecomposed), which draws eager's numbers there as well.
    """
    if input.device.type != "cpu" or train is False or p == 0:
        return NotImplemented
    keep = 1.0 - p
    scale = 0.0 if keep == 0 else 1.0 / keep
    mask = torch.ops.aten.bernoulli.p(input, keep)
    return input.mul(mask).mul(scale), mask.to(torch.bool)


def eager_random_decomp_table() -> dict[Any, Callable[..., Any]]:
    """Inductor's decompositions minus those of random ops (``nondeterministic_seeded``), so the graphs
    call the random kernels eager PyTorch calls and draw the same numbers from the same generator.

    Inductor decomposes ``native_dropout`` and ``bernoulli`` into ``rand_like`` comparisons (its
    ``fast_random_decomps``, or core's with ``fallback_random``), which draw a different stream than
    eager's ``bernoulli_`` kernel; everything else stays as in production.
    """
    table = {
        op: fn
        for op, fn in select_decomp_table().items()
        if torch.Tag.nondeterministic_seeded not in getattr(op, "tags", ())
    }
    table[torch.ops.aten.native_dropout.default] = _native_dropout_as_eager_cpu
    return table


def torch_min_cut_partition_without_cse(
    joint_module: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """torch's min-cut partitioner with its CSE pass off (``functorch_config.cse``, read at call time in
    2.11-2.13): torch's ``fx_graph_cse`` merges identical functional collectives, which changes what
    the ranks communicate. Callers run autoremat's collectives-safe CSE first."""
    with functorch_config.patch(cse=False):
        return min_cut_rematerialization_partition(joint_module, joint_inputs, **kwargs)


def torch_default_partition(
    joint_module: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """torch's no-recompute partitioner: the reference tests compare against (saves everything)."""
    from torch._functorch.partitioners import default_partition

    return default_partition(joint_module, joint_inputs, **kwargs)


def _graph_shape_env(graph: fx.Graph) -> Any | None:
    """The shape environment of ``graph``'s symbolic sizes, or None when every size is static."""
    for node in graph.nodes:
        for value in pytree.tree_leaves(node.meta.get("val")):
            sizes = value.shape if isinstance(value, torch.Tensor) else (value,)
            for size in sizes:
                if isinstance(size, torch.SymInt):
                    return size.node.shape_env
    return None


def bare_size_symbol(value: Any) -> Any | None:
    """The symbol of a SymInt that is exactly one backed size symbol (``s0``), else None."""
    if not isinstance(value, torch.SymInt):
        return None
    expr = value.node.expr
    if isinstance(expr, sympy.Symbol) and not _is_unbacked(expr):
        return expr
    return None


def planned_sizes(graph: fx.Graph) -> dict[Any, tuple[int, str]]:
    """Every size symbol of ``graph``'s shape environment (backed and unbacked, after replacements):
    the value memory is planned at, and why."""
    shape_env = _graph_shape_env(graph)
    if shape_env is None:
        return {}
    symbols = set(_backed_hints(shape_env)) | {s for s in shape_env.var_to_range if _is_unbacked(s)}
    return {
        s: planned_size(shape_env, s) for s in sorted(symbols, key=str) if s not in shape_env.replacements
    }


def graph_symbol_hints(graph: fx.Graph) -> dict[Any, int]:
    """Values of every size symbol of ``graph`` (from its shape environment; nothing is guarded):
    backed symbols at their hints, unbacked ones at ``unbacked_bound``."""
    shape_env = _graph_shape_env(graph)
    if shape_env is None:
        return {}
    hints = {s: int(v) for s, v in _backed_hints(shape_env).items()}
    for symbol in shape_env.var_to_range:
        if _is_unbacked(symbol) and symbol not in hints:
            hints[symbol] = unbacked_bound(shape_env, symbol)[0]
    return hints


def inductor_cache_dir() -> str:
    """Inductor's on-disk cache root (TORCHINDUCTOR_CACHE_DIR or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def profiler_memory_events(prof: Any) -> list[tuple[int, int]]:
    """(start ns, bytes) of every allocator event a ``torch.profiler.profile(profile_memory=True)``
    recorded: positive for allocations, negative for frees. ``prof.events()`` keeps only the events it
    can attach to an op, so this reads the raw Kineto results."""
    return [
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    ]


# ---------------------------------------------------------------------------------------------------
# Inductor's own memory plan of one graph (2.11-2.13): lower it as compile_fx would, generate the
# wrapper (no C++/Triton compile), and read the planned allocations, reuses and frees. Everything here
# is private Inductor API; callers treat any exception as "no estimate".


#: a tensor's (size, stride)
TensorLayout = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class MemoryEvent:
    """One step of a generated wrapper's memory plan, free of Inductor's types.

    ``kind``: ``"alloc"`` (``name`` gets ``nbytes`` of new storage), ``"reuse"`` (``name`` takes over
    ``other``'s storage; with ``drop_other`` the old name is gone), ``"hold"`` (``name`` is dead but
    kept for a later reuse), ``"free"`` (``name`` released), ``"call"`` (an extern kernel runs;
    ``origin`` is the FX node it came from, for its scratch memory), ``"output"`` (one per graph
    output, in order, after the plan: the storage ``name`` it lives in, a buffer of ``nbytes`` or a
    graph input; ``name`` is empty for a non-tensor output).
    """

    kind: str
    name: str
    nbytes: int = 0
    other: str = ""
    drop_other: bool = False
    origin: fx.Node | None = None
    #: the (size, stride) Inductor chose, which can differ from the FX metadata (layout optimisation
    #: runs CPU convolutions channels-last): of each tensor a ``"call"`` reads, in argument order, or of
    #: an ``"output"``; None where not static
    layouts: tuple[TensorLayout | None, ...] = ()


def fw_donated_buffer_idxs(
    fw_inputs: Sequence[Any], user_outputs: Sequence[Any], bw_outputs: Sequence[Any], saved: Sequence[Any]
) -> list[int]:
    """The backward inputs AOTAutograd lets Inductor overwrite (saved activations nobody else holds)."""
    from torch._functorch._aot_autograd.graph_compile import collect_fw_donated_buffer_idxs

    if not functorch_config.donated_buffer:
        return []
    return list(collect_fw_donated_buffer_idxs(fw_inputs, user_outputs, bw_outputs, saved))


def _buffer_bytes(node: Any) -> int:
    from torch._inductor.utils import get_dtype_size
    from torch._inductor.virtualized import V

    size = V.graph.sizevars.optimization_hint(V.graph.get_allocation_storage_size(node), fallback=0)
    return int(size) * get_dtype_size(node.get_dtype())


def _origin(node: Any) -> fx.Node | None:
    kernel = getattr(node, "op_overload", None)
    candidates = [getattr(node, "origin_node", None), *sorted(getattr(node, "origins", ()) or (), key=str)]
    candidates = [c for c in candidates if isinstance(getattr(c, "target", None), torch._ops.OpOverload)]
    exact = [c for c in candidates if c.target is kernel]
    return (exact or candidates or [None])[0]


def _static_layout(node: Any) -> TensorLayout | None:
    """(size, stride) of an Inductor IR tensor as ints; None for a non-tensor or a symbolic layout."""
    try:
        layout = node.get_layout()
        exprs = (*layout.size, *layout.stride)
    except (AttributeError, NotImplementedError):
        return None
    if not all(isinstance(e, (int, sympy.Integer)) for e in exprs):
        return None
    return tuple(int(s) for s in layout.size), tuple(int(s) for s in layout.stride)


def _call_event(node: Any) -> MemoryEvent:
    """An extern kernel's call, with the layouts its tensor inputs really have."""
    layouts = tuple(_static_layout(i) for i in getattr(node, "inputs", ()))
    return MemoryEvent("call", node.get_name(), origin=_origin(node), layouts=layouts)


def _output_events(graph: Any) -> list[MemoryEvent]:
    """One ``"output"`` event per graph output: the storage it lives in (a buffer, or a graph input
    when Inductor returns an input or a view of one) and its layout. Inductor may return a new buffer
    where the FX graph returns an input: a saved parameter copied to channels-last for the backward."""
    events = []
    for out in graph.graph_outputs or ():
        if not (hasattr(out, "has_tensor_output") and out.has_tensor_output()):
            events.append(MemoryEvent("output", ""))
            continue
        name = out.get_name()
        buffer = None if name in graph.graph_inputs else graph.try_get_buffer(name)
        nbytes = _buffer_bytes(buffer) if buffer is not None else 0
        events.append(MemoryEvent("output", name, nbytes, layouts=(_static_layout(out),)))
    return events


def _restrided(inputs: list[Any], strides: Sequence[Sequence[int] | None]) -> list[Any]:
    """The example inputs with the strides the caller really passes (as AOTAutograd restrides a
    backward's saved activations to the strides the compiled forward returned them in)."""
    restrided = list(inputs)
    for i, stride in enumerate(strides):
        x = inputs[i]
        if stride is not None and isinstance(x, torch.Tensor) and tuple(x.stride()) != tuple(stride):
            restrided[i] = x.as_strided(x.size(), tuple(stride))
    return restrided


def carried_thread_state() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """The calling thread's state that an Inductor lowering reads, to re-enter on a worker thread:
    grad mode and the Python dispatcher (both set inside AOTAutograd's compile, where the partitioner
    runs: grad off, dispatcher on). The compile's fake mode and tracing context are left out: the
    memory plan's lowering leaves them anyway (``inductor_memory_plan``)."""
    grad = torch.is_grad_enabled()
    dispatcher = torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.PythonDispatcher)

    @contextlib.contextmanager
    def entered() -> Iterator[None]:
        from torch._dispatch.python import enable_python_dispatcher

        with (
            torch.set_grad_enabled(grad),
            enable_python_dispatcher() if dispatcher else contextlib.nullcontext(),
        ):
            yield

    return entered


def inductor_layout_optimisation(gm: fx.GraphModule, config_patches: dict[str, Any] | None = None) -> bool:
    """Whether Inductor's layout optimisation applies to ``gm`` (``GraphLowering.decide_layout_opt``,
    under ``config_patches``): it then runs the convolutions channels-last and returns the values a
    backward saves in its own strides, where they differ from the FX metadata's."""
    from torch._inductor.graph import GraphLowering

    patches = {k: v for k, v in (config_patches or {}).items() if k != "custom_partitioner_fn"}
    with inductor_config.patch(patches):
        return bool(GraphLowering.decide_layout_opt(gm, is_inference=False))


def inductor_memory_plan(
    gm: fx.GraphModule,
    *,
    is_backward: bool,
    donated_idxs: list[int] | None = None,
    config_patches: dict[str, Any] | None = None,
    copy_graph: bool = True,
    input_strides: Sequence[Sequence[int] | None] = (),
) -> tuple[dict[str, int], list[MemoryEvent]]:
    """(graph input name → storage bytes, the wrapper's memory events) of ``gm`` compiled by Inductor.

    Replicates compile_fx's lowering on a copy of ``gm`` with fake inputs made from its placeholders'
    metadata, under ``config_patches``. Two pieces of compile_fx's context are supplied by hand: the
    donated backward inputs (``donated_idxs``, read by GraphLowering from a TracingContext there is
    none of here) and a DebugContext for V.debug. ``copy_graph=False`` lets Inductor's post-grad
    passes rewrite ``gm`` itself, for a caller that made it only to be replayed. ``input_strides`` (per
    placeholder, None to keep the metadata's) restrides the inputs as compile_fx's caller does: a
    backward's saved activations arrive in the layout the compiled forward returned them in (its
    ``"output"`` events).
    """
    import copy

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    if copy_graph:
        gm = copy.deepcopy(gm)  # the post-grad passes rewrite the graph
    # inside a compile (the partitioner runs in AOTAutograd) the compile's own fake mode and tracing
    # context are active; this lowering must neither mix with nor write to them
    with unset_fake_temporarily(), torch._guards.tracing(None):
        return _inductor_memory_plan(gm, is_backward, donated_idxs, config_patches, input_strides)


def _inductor_memory_plan(
    gm: fx.GraphModule,
    is_backward: bool,
    donated_idxs: list[int] | None,
    config_patches: dict[str, Any] | None,
    input_strides: Sequence[Sequence[int] | None],
) -> tuple[dict[str, int], list[MemoryEvent]]:
    import torch._inductor.graph as graph_module
    from torch._inductor import ir
    from torch._inductor.codegen import wrapper
    from torch._inductor.compile_fx import _recursive_post_grad_passes, fake_tensor_prop
    from torch._inductor.debug import DebugContext
    from torch._inductor.fx_passes.post_grad import view_to_reshape
    from torch._inductor.virtualized import V
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    inputs = [
        mode.from_tensor(v) if isinstance(v := p.meta.get("val"), torch.Tensor) else v
        for p in gm.graph.find_nodes(op="placeholder")
    ]
    inputs = _restrided(inputs, input_strides)
    patches = {k: v for k, v in (config_patches or {}).items() if k != "custom_partitioner_fn"}
    # the memory plan does not depend on how a CPU kernel's loops are vectorised, and choosing the
    # vector tiling is most of the code generation's time
    patches["cpp.simdlen"] = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(inductor_config.patch(patches))
        original = graph_module.get_donated_idxs
        graph_module.get_donated_idxs = lambda: donated_idxs
        stack.callback(setattr, graph_module, "get_donated_idxs", original)
        stack.enter_context(DebugContext())
        view_to_reshape(gm)
        with torch.no_grad():
            fake_mode = fake_tensor_prop(gm, inputs)
        stack.enter_context(V.set_fake_mode(fake_mode))
        _recursive_post_grad_passes(gm, is_inference=False)
        graph = graph_module.GraphLowering(
            gm,
            example_inputs=inputs,
            shape_env=fake_mode.shape_env,
            is_inference=False,
            is_backward=is_backward,
        )
        graph.freeze_runtime_asserts()
        stack.enter_context(V.set_graph_handler(graph))
        stack.enter_context(V.set_extern_kernel_nodes([]))
        graph.run(*inputs)
        graph.codegen()  # scheduler, kernels' source, wrapper with memory_plan_reuse; nothing compiled
        graph_inputs = {
            name: _buffer_bytes(node)
            for name, node in graph.graph_inputs.items()
            if hasattr(node, "get_dtype")
        }
        events: list[MemoryEvent] = []
        lines = graph.wrapper_code.lines
        pre_allocated: set[str] = set()
        for i, line in enumerate(lines):
            if isinstance(line, wrapper.AllocateLine):
                events.append(MemoryEvent("alloc", line.node.get_name(), _buffer_bytes(line.node)))
            elif isinstance(line, wrapper.ReuseLine):
                events.append(
                    MemoryEvent(
                        "reuse",
                        line.reused_as.get_name(),
                        other=line.node.get_name(),
                        drop_other=line.delete_old,
                    )
                )
            elif isinstance(line, wrapper.FreeIfNotReusedLine):
                events.append(MemoryEvent("hold" if line.is_reused else "free", line.node.get_name()))
            elif isinstance(line, wrapper.FreeLine):
                events.append(MemoryEvent("free", line.node.get_name()))
            elif isinstance(line, wrapper.ExternKernelAllocLine):
                node = line.node
                if not isinstance(node.layout, ir.MultiOutputLayout):
                    events.append(MemoryEvent("alloc", node.get_name(), _buffer_bytes(node)))
                else:  # the kernel allocates all its outputs when it runs
                    for later in lines[i + 1 :]:
                        if isinstance(later, wrapper.MultiOutputLine) and later.arg_name == node.get_name():
                            buffer = graph.try_get_buffer(later.result_name)
                            nbytes = _buffer_bytes(buffer) if buffer is not None else 0
                            events.append(MemoryEvent("alloc", later.result_name, nbytes))
                            pre_allocated.add(later.result_name)
                events.append(_call_event(node))
            elif isinstance(line, wrapper.ExternKernelOutLine):
                events.append(_call_event(line.node))
            elif isinstance(line, wrapper.MultiOutputLine) and line.result_name not in pre_allocated:
                buffer = graph.try_get_buffer(line.result_name)
                nbytes = _buffer_bytes(buffer) if buffer is not None else 0
                events.append(MemoryEvent("alloc", line.result_name, nbytes))
        events.extend(_output_events(graph))
    return graph_inputs, events


def optimizer_defaults_to_foreach(params: list[torch.Tensor]) -> bool:
    """Whether torch's optimizers take their multi-tensor path for ``params`` when ``foreach`` is
    left unset (torch.optim.optimizer._default_to_fused_or_foreach; 2.11-2.13: foreach on CUDA and
    other foreach-capable devices, not on CPU)."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        return bool(_default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1])
    except (ImportError, TypeError):  # a torch without it: the multi-tensor path off CPU
        return all(p.device.type != "cpu" for p in params)


def current_tracing_context() -> Any:
    """The TracingContext a backend is called in (Dynamo's), to compile the same graph again later
    under it (``step.py`` recompiles a region with the plan chosen for the whole step)."""
    return torch._guards.TracingContext.try_get()


def tracing(context: Any) -> Any:
    """Re-enter a TracingContext saved by ``current_tracing_context``."""
    return torch._guards.tracing(context)


#: a graph break where a model wants one (the step-budget benchmark's model compiled whole in two
#: graphs); the same function object, so Dynamo treats the call as its own
graph_break = torch._dynamo.graph_break
