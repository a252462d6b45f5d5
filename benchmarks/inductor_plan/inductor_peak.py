"""Prototype: peak memory of one training step *as Inductor will run it*, from the partitioner's fw/bw graphs.

Two estimators, both driven by Inductor's own machinery (torch 2.13):

  (a) "sched": lower each graph (GraphLowering.run), build the Scheduler (fusion + reorder, exactly as
      codegen does), then torch._inductor.memory.prepare_planning_info + estimate_peak_memory, with the
      freeable graph inputs restricted to the activations the step really frees (parameters / batch /
      parameter views removed).
  (b) "wrapper": full GraphLowering.codegen() (scheduler + kernel source + wrapper, no C++ compile), then
      replay the planned wrapper lines (after memory_plan_reuse): AllocateLine, ReuseLine,
      FreeIfNotReusedLine, FreeLine, ExternKernelAllocLine/MultiOutputLine, plus each extern kernel's
      transient scratch (WORKSPACE_MODE: "probe" = run the op once on real tensors shaped like the fx
      meta and measure; "rules" = autoremat.passes.workspace). Exact on gpt2/llama/deep_mlp/
      long_context; over-estimates resnet (conv backward: probe uses NCHW meta strides, Inductor's
      layout optimisation changes them; plus an unexplained +166 KB) -- see REPORT.md section 3.

Step peak = max(forward peak, bytes live at the end of the forward (saved + user outputs) + backward
peak above its start) -- the backward replay starts with the saved activations live and frees them
where Inductor's wrapper deletes them.

Usage:
    est = estimate_step_peak(fw_gm, bw_gm, num_fwd_outputs, method="wrapper"|"sched",
                             config_patches={...})
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef


# ----------------------------------------------------------------------------------------------- helpers
def _val(n: fx.Node):
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _nbytes(t) -> int:
    if not isinstance(t, torch.Tensor):
        return 0
    return int(t.untyped_storage().nbytes())


def _outputs(gm: fx.GraphModule) -> list:
    return list(next(reversed(gm.graph.find_nodes(op="output"))).args[0])


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return list(gm.graph.find_nodes(op="placeholder"))


def _storage(t):
    try:
        return StorageWeakRef(t.untyped_storage())
    except Exception:  # noqa: BLE001
        return None


@dataclass
class StepInfo:
    """What the step frees / keeps, derived from the fw/bw graphs' FakeTensor metadata."""

    #: bw placeholder names that are real activations (freed by the backward after last use)
    bw_activation_inputs: set[str]
    #: bytes live at the end of the forward (unique storages of saved activations + user outputs)
    fwd_end_bytes: int
    saved_bytes: int
    bw_donated_idxs: list[int]
    #: bw activation input name -> a representative name sharing its storage (views of one saved base)
    bw_input_alias: dict[str, str] = field(default_factory=dict)


def step_info(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int) -> StepInfo:
    fw_in_storages = {_storage(_val(p)) for p in _placeholders(fw) if isinstance(_val(p), torch.Tensor)}
    outs = _outputs(fw)
    user, saved = outs[:num_fwd_outputs], outs[num_fwd_outputs:]
    seen: set = set()
    fwd_end = saved_b = 0
    act_names: set[str] = set()
    saved_tensor_nodes = [n for n in saved if isinstance(_val(n), torch.Tensor)]
    for i, n in enumerate(user + saved_tensor_nodes):
        v = _val(n)
        if not isinstance(v, torch.Tensor):
            continue
        s = _storage(v)
        if s in fw_in_storages:
            continue  # a parameter, a batch input, or a view of one: lives before/after the step
        if i >= len(user):
            act_names.add(n.name)
        if s in seen:
            continue
        seen.add(s)
        fwd_end += _nbytes(v)
        if i >= len(user):
            saved_b += _nbytes(v)
    # bw placeholders: saved values keep the fw node's name in the partitioner's split; tangents follow
    bw_ph = _placeholders(bw)
    bw_act = {p.name for p in bw_ph if p.name in act_names or p.name.startswith("tangents")}
    alias: dict[str, str] = {}
    rep: dict = {}
    for p in bw_ph:
        if p.name in bw_act and isinstance(_val(p), torch.Tensor):
            s = _storage(_val(p))
            alias[p.name] = rep.setdefault(s, p.name)
    # AOTAutograd's donated-buffer analysis (what Inductor reads through TracingContext.fw_metadata)
    from torch._functorch._aot_autograd.graph_compile import collect_fw_donated_buffer_idxs

    donated = collect_fw_donated_buffer_idxs(
        [_val(p) for p in _placeholders(fw)],
        [_val(n) for n in user],
        [_val(n) for n in _outputs(bw)],
        [_val(n) for n in saved],
    )
    if not torch._functorch.config.donated_buffer:
        donated = []
    return StepInfo(bw_act, fwd_end, saved_b, list(donated), alias)


# ------------------------------------------------------------------------------------------- lowering
@contextlib.contextmanager
def _inductor_context(donated_idxs: list[int] | None, config_patches: dict[str, Any] | None):
    """The ambient state compile_fx normally provides: config patches, donated idxs (TracingContext)."""
    import torch._inductor.graph as graph_mod
    from torch._inductor import config as inductor_config

    patches = dict(config_patches or {})
    patches.pop("custom_partitioner_fn", None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(inductor_config.patch(patches))
        # GraphLowering.__init__ reads bw_donated_idxs via utils.get_donated_idxs() from the
        # TracingContext's fw_metadata; outside compile_fx there is none, so mock the lookup.
        orig = graph_mod.get_donated_idxs
        graph_mod.get_donated_idxs = lambda: donated_idxs
        stack.callback(setattr, graph_mod, "get_donated_idxs", orig)
        yield


def lower(gm: fx.GraphModule, is_backward: bool, donated_idxs=None, config_patches=None):
    """Replicates _InProcessFxCompile.codegen_and_compile up to graph.run(); returns (graph, ctxs, t)."""
    from torch._inductor.compile_fx import _recursive_post_grad_passes, fake_tensor_prop
    from torch._inductor.fx_passes.post_grad import view_to_reshape
    from torch._inductor.graph import GraphLowering
    from torch._inductor.virtualized import V
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    t0 = time.perf_counter()
    gm = copy.deepcopy(gm)  # post-grad passes mutate the graph
    # fresh fake inputs from the placeholders' metadata (a private fake mode: no TracingContext needed)
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    inputs = []
    for p in _placeholders(gm):
        v = _val(p)
        inputs.append(mode.from_tensor(v) if isinstance(v, torch.Tensor) else v)
    stack = contextlib.ExitStack()
    stack.enter_context(_inductor_context(donated_idxs, config_patches))
    from torch._inductor.debug import DebugContext

    stack.enter_context(DebugContext())  # V.debug (the scheduler logs IR through it)
    view_to_reshape(gm)
    with torch.no_grad():
        fake_mode = fake_tensor_prop(gm, inputs)
    stack.enter_context(V.set_fake_mode(fake_mode))
    _recursive_post_grad_passes(gm, is_inference=False)
    graph = GraphLowering(
        gm, example_inputs=inputs, shape_env=fake_mode.shape_env, is_inference=False, is_backward=is_backward
    )
    graph.freeze_runtime_asserts()
    stack.enter_context(V.set_graph_handler(graph))
    stack.enter_context(V.set_extern_kernel_nodes([]))
    graph.run(*inputs)
    return graph, stack, time.perf_counter() - t0


# ------------------------------------------------------------------------------ (a) scheduler estimate
def sched_peak(graph, activation_inputs: set[str] | None) -> tuple[int, dict]:
    """Peak of one graph by Inductor's scheduler model (inside lower()'s context)."""
    from torch._inductor import memory
    from torch._inductor.utils import OrderedSet
    from torch._inductor.virtualized import V

    t0 = time.perf_counter()
    graph._update_scheduler()  # Scheduler(graph.operations): fusion, reorder_for_peak_memory, ...
    sched = graph.scheduler
    t_sched = time.perf_counter() - t0
    t1 = time.perf_counter()
    inputs = OrderedSet(V.graph.graph_inputs.keys())
    outputs = OrderedSet(V.graph.get_output_names())
    _, freeable = memory.prepare_planning_info(
        sched.nodes, sched.name_to_buf, sched.name_to_fused_node, inputs, outputs
    )
    keep = activation_inputs or set()
    freeable = {k: v for k, v in freeable.items() if k in keep}
    peak, per_step = memory.estimate_peak_memory(sched.nodes, freeable, outputs)
    start = sum(v.mpi_buffer.size_free for v in freeable.values())
    # activation inputs no node reads are not in `freeable` but still live through the graph
    return peak, {
        "sched_s": t_sched,
        "estimate_s": time.perf_counter() - t1,
        "start": start,
        "nodes": len(sched.nodes),
    }


# ------------------------------------------------------------------------------- (b) wrapper replay
def _buf_bytes(node) -> int:
    from torch._inductor.utils import get_dtype_size
    from torch._inductor.virtualized import V

    try:
        n = V.graph.sizevars.optimization_hint(V.graph.get_allocation_storage_size(node), fallback=0)
        return int(n) * get_dtype_size(node.get_dtype())
    except Exception:  # noqa: BLE001
        return 0


def _origins(node) -> str:
    try:
        names = sorted(o.name for o in node.get_origins())
    except Exception:  # noqa: BLE001
        return "?"
    return ",".join(names[:4]) + ("..." if len(names) > 4 else "")


_WS_CACHE: dict = {}
#: "rules": autoremat.passes.workspace (its CPU rules); "probe": run the op once on real tensors of the
#: same shapes/strides under the profiler and take (peak during the call) - (outputs it returns)
WORKSPACE_MODE = "probe"


def _realize(v):
    if isinstance(v, torch.Tensor):
        size = [int(x) for x in v.shape]
        stride = [int(x) for x in v.stride()]
        t = torch.empty_strided(size, stride, dtype=v.dtype, device="cpu")
        if t.dtype.is_floating_point:
            t.uniform_(-1, 1)
        else:
            t.zero_()
        return t
    return v


def _probe_workspace(fx_node) -> int:
    import torch.utils._pytree as pytree
    from torch.profiler import ProfilerActivity, profile

    target = fx_node.target
    if not isinstance(target, torch._ops.OpOverload):
        return 0

    def val(a):
        return _realize(a.meta.get("val")) if isinstance(a, fx.Node) else a

    try:

        def layout(a):
            value = a.meta.get("val") if isinstance(a, fx.Node) else None
            if isinstance(value, torch.Tensor):
                return tuple(value.shape), tuple(value.stride()), value.dtype
            return None if isinstance(a, fx.Node) else a

        key = (str(target), str(pytree.tree_map(layout, (fx_node.args, fx_node.kwargs))))
    except Exception:  # noqa: BLE001
        return 0
    if key in _WS_CACHE:
        return _WS_CACHE[key]
    try:
        args, kwargs = pytree.tree_map(val, (fx_node.args, fx_node.kwargs))
        with torch.no_grad():
            target(*args, **kwargs)  # warm-up: first calls allocate one-off state (oneDNN primitives)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = target(*args, **kwargs)
        ev = sorted(
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]"
        )
        live = peak = 0
        for _, n in ev:
            live += n
            peak = max(peak, live)
        ws = max(0, peak - live)  # live at the end = the outputs still referenced
        del out
    except Exception:  # noqa: BLE001
        ws = 0
    _WS_CACHE[key] = ws
    return ws


def _workspace(node) -> int:
    """Scratch an extern kernel allocates while it runs, from the post-grad fx node it came from."""
    cands = [getattr(node, "origin_node", None)] + sorted(getattr(node, "origins", ()) or (), key=str)
    cands = [
        o for o in cands if o is not None and isinstance(getattr(o, "target", None), torch._ops.OpOverload)
    ]
    if not cands:
        return 0
    if WORKSPACE_MODE == "rules":
        from autoremat.passes.workspace import workspace_bytes

        return max(workspace_bytes(o) for o in cands)
    kernel = getattr(node, "op_overload", None)
    pick = [o for o in cands if o.target is kernel] or cands[:1]
    return max(_probe_workspace(o) for o in pick)


def wrapper_peak(
    graph,
    activation_inputs: set[str] | None,
    detail: dict | None = None,
    do_codegen: bool = True,
    workspace: bool = True,
    input_alias: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """Replay the planned wrapper lines of graph.codegen() (inside lower()'s context).

    ``detail`` (optional dict) receives a diagnosis: live storages at the peak with their origin fx
    nodes, bytes dead-but-held for reuse at the peak, in-place reuses of donated inputs.
    """
    from torch._inductor import ir
    from torch._inductor.codegen import wrapper as w
    from torch._inductor.virtualized import V

    t0 = time.perf_counter()
    if do_codegen:
        # init_wrapper_code, Scheduler, scheduler.codegen, wrapper.generate -> memory_plan_reuse
        graph.codegen()
    t_codegen = time.perf_counter() - t0
    lines = graph.wrapper_code.lines
    act = activation_inputs or set()
    name_to_sid: dict[str, int] = {}
    sid_bytes: dict[int, int] = {}
    sid_refs: dict[int, set[str]] = {}
    sid_origin: dict[int, str] = {}
    held: dict[int, str] = {}  # storages freed in the program but kept for a later ReuseLine
    next_sid = [0]
    donated_inplace = []
    pre_allocated: set[str] = set()

    def new(name, nbytes, origin=""):
        sid = next_sid[0]
        next_sid[0] += 1
        sid_bytes[sid] = nbytes
        sid_refs[sid] = {name}
        name_to_sid[name] = sid
        sid_origin[sid] = f"{name}<{origin}>"

    def drop(name):
        sid = name_to_sid.pop(name, None)
        if sid is None:
            return
        sid_refs[sid].discard(name)
        if not sid_refs[sid]:
            del sid_refs[sid]
            sid_bytes.pop(sid)
            held.pop(sid, None)

    input_alias = input_alias or {}
    for name, node in V.graph.graph_inputs.items():
        if name in act:
            base = input_alias.get(name, name)
            if base != name and base in name_to_sid:  # a view of an input already counted
                sid = name_to_sid[base]
                name_to_sid[name] = sid
                sid_refs[sid].add(name)
                continue
            # storage bytes of the input (placeholders may be views of a larger saved base)
            new(name, _buf_bytes(node) if hasattr(node, "get_dtype") else 0, "input")
    live = sum(sid_bytes.values())
    peak, peak_at, peak_state = live, "start", None
    for i, line in enumerate(lines):
        if isinstance(line, w.AllocateLine):
            new(line.node.get_name(), _buf_bytes(line.node), _origins(line.node))
        elif isinstance(line, w.ReuseLine):
            old, newn = line.node.get_name(), line.reused_as.get_name()
            sid = name_to_sid.get(old)
            if sid is None:  # reuse of something untracked (parameter): treat as fresh
                new(newn, _buf_bytes(line.reused_as), _origins(line.reused_as))
            else:
                if old in V.graph.graph_inputs:
                    donated_inplace.append((old, newn, sid_bytes[sid]))
                held.pop(sid, None)
                name_to_sid[newn] = sid
                sid_refs[sid].add(newn)
                sid_origin[sid] += f" -> {newn}<{_origins(line.reused_as)}>"
                if line.delete_old:
                    name_to_sid.pop(old, None)
                    sid_refs[sid].discard(old)
        elif isinstance(line, w.FreeIfNotReusedLine):
            if not line.is_reused:
                drop(line.node.get_name())
            else:
                sid = name_to_sid.get(line.node.get_name())
                if sid is not None:
                    held[sid] = line.node.get_name()
        elif isinstance(line, w.FreeLine):
            drop(line.node.get_name())
        elif isinstance(line, w.ExternKernelAllocLine):
            node = line.node
            if not isinstance(node.layout, ir.MultiOutputLayout):
                new(node.get_name(), _buf_bytes(node), _origins(node))
            else:  # the kernel allocates all its outputs at the call: pre-allocate the MultiOutputs
                for nxt in lines[i + 1 : i + 64]:
                    if isinstance(nxt, w.MultiOutputLine) and nxt.arg_name == node.get_name():
                        buf = V.graph.try_get_buffer(nxt.result_name)
                        new(
                            nxt.result_name,
                            _buf_bytes(buf) if buf is not None else 0,
                            _origins(buf) if buf is not None else "",
                        )
                        pre_allocated.add(nxt.result_name)
        elif isinstance(line, w.MultiOutputLine):
            if line.result_name not in pre_allocated:
                buf = V.graph.try_get_buffer(line.result_name)
                new(
                    line.result_name,
                    _buf_bytes(buf) if buf is not None else 0,
                    _origins(buf) if buf is not None else "",
                )
        else:
            continue
        live = sum(sid_bytes.values())
        if workspace and isinstance(line, (w.ExternKernelAllocLine, w.ExternKernelOutLine)):
            ws = _workspace(line.node)
            if live + ws > peak:  # transient scratch during the call
                peak, peak_at = live + ws, f"{i}:{type(line).__name__}+ws{ws}:{line.node.get_name()}"
                if detail is not None:
                    peak_state = (dict(sid_bytes), dict(held), dict(sid_origin))
        if live > peak:
            where = getattr(line, "node", None) and line.node.get_name()
            peak, peak_at = live, f"{i}:{type(line).__name__}:{where}"
            if detail is not None:
                peak_state = (dict(sid_bytes), dict(held), dict(sid_origin))
    start = sum(
        _buf_bytes(V.graph.graph_inputs[n])
        for n in V.graph.graph_inputs
        if n in act and input_alias.get(n, n) == n
    )
    if detail is not None:
        detail["peak_at"] = peak_at
        detail["donated_inplace"] = donated_inplace
        detail["donated_inplace_bytes"] = sum(b for _, _, b in donated_inplace)
        if peak_state:
            sb, hd, so = peak_state
            detail["held_dead_at_peak"] = sum(sb[s] for s in hd if s in sb)
            detail["held_dead_list"] = [(so[s], sb[s]) for s in hd if s in sb]
            detail["live_at_peak"] = sorted(((so[s], b) for s, b in sb.items()), key=lambda x: -x[1])
        else:
            detail["held_dead_at_peak"] = 0
            detail["live_at_peak"] = []
        detail["num_reuse_lines"] = sum(isinstance(x, w.ReuseLine) for x in lines)
        detail["scheduler_order"] = [
            (_origins(n.node) if getattr(n, "node", None) is not None else n.get_name())
            for n in V.graph.scheduler.nodes
        ]
    return peak, {"codegen_s": t_codegen, "start": start, "peak_at": peak_at, "lines": len(lines)}


# ------------------------------------------------------------------------------------------ the step
@dataclass
class StepEstimate:
    method: str
    peak: int
    fw_peak: int
    bw_peak: int  # absolute, including the saved activations live at the backward's start
    fwd_end_bytes: int
    saved_bytes: int
    seconds: dict = field(default_factory=dict)


def graph_peak(
    gm,
    is_backward,
    method,
    activation_inputs,
    donated_idxs=None,
    config_patches=None,
    detail=None,
    input_alias=None,
):
    graph, stack, t_lower = lower(gm, is_backward, donated_idxs, config_patches)
    with stack:
        if method == "sched":
            peak, info = sched_peak(graph, activation_inputs)
        else:
            peak, info = wrapper_peak(graph, activation_inputs, detail, input_alias=input_alias)
    info["lower_s"] = t_lower
    return peak, info


def estimate_step_peak(
    fw: fx.GraphModule,
    bw: fx.GraphModule,
    num_fwd_outputs: int,
    method: str = "wrapper",
    config_patches: dict | None = None,
) -> StepEstimate:
    si = step_info(fw, bw, num_fwd_outputs)
    fw_peak, fi = graph_peak(fw, False, method, set(), None, config_patches)
    bw_peak, bi = graph_peak(
        bw, True, method, si.bw_activation_inputs, si.bw_donated_idxs, config_patches, None, si.bw_input_alias
    )
    # bw_peak counts the activation inputs as live from its start (their bytes: bi["start"]); above the
    # forward's end state, the step also holds the user outputs (loss) and anything saved but unread.
    bw_abs = si.fwd_end_bytes + (bw_peak - bi["start"])
    secs = {f"fw_{k}": v for k, v in fi.items() if k.endswith("_s")}
    secs.update({f"bw_{k}": v for k, v in bi.items() if k.endswith("_s")})
    return StepEstimate(method, max(fw_peak, bw_abs), fw_peak, bw_abs, si.fwd_end_bytes, si.saved_bytes, secs)
