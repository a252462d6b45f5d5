"""Build a BudgetProblem from a joint graph: the liveness model linearised around a reference plan.

Constraints mirror the min-cut's: a value the backward reads must be saved or recomputed; random,
collective, effectful, mutating and MUST_SAVE nodes are never recomputed (the analysis' placement);
MUST_RECOMPUTE nodes are never saved. Memory comes from the liveness model
(``cost_models/liveness.py``):

- **backward**: positions are the backward's own nodes (the *spine*) in schedule order. A saved storage
  is live from the start of the backward to its last use ``save_last``; a recomputed value from just
  before its first use to its last use (``first``/``last``, measured through the recompute chains the
  reference plan implies; values the reference does not need, because it saves what reads them, at
  the first position a rebuilt reader would need them); the spine's own values and the tangents (live
  from the backward's start to its end, as the liveness model counts them) give a fixed
  profile ``bwd_base``. What the recomputation just before one spine node makes and uses up (a
  chain rebuilt for one matmul), and saved storages only that recomputation reads last, are charged
  within that *burst*, step by step, beside what is live before the spine node (``bursts``).
- **forward**: a saved storage stays live after its last forward use ``fwd_release``; the forward's own
  transients give a fixed profile ``fwd_base``.

At the reference plan the model is raised to the simulation wherever it falls short (backward-only
values the forward computes at its end, a burst's value that a later burst reads again, a rebuilt
node's scratch) and left conservative where it overestimates. Elsewhere it is an approximation:
the budget solver checks every plan with the full liveness simulation.
Objective: predicted recompute time (the fusion model's per-node marginal cost, linearised by assuming
a recomputed fusible node's fusible inputs are recomputed with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch.fx as fx

from autoremat.cost_models import GraphCosts
from autoremat.cost_models.liveness import (
    StepSchedule,
    backward_live_in,
    live_profile,
    step_schedule,
    tangent_storages,
)
from autoremat.cost_models.workspace import workspace_bytes
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.graph.placement import ancestors
from autoremat.graph.storage import StorageIndex, StorageKey, storage_of
from autoremat.passes.budget_problem import (
    UNUSED,
    BudgetProblem,
    modelled_backward,
    modelled_forward,
)


@dataclass(frozen=True)
class BuiltProblem:
    """A BudgetProblem and the FX nodes its indices stand for."""

    problem: BudgetProblem
    nodes: tuple[fx.Node, ...]


def build_problem(
    analysis: JointGraphAnalysis, costs: GraphCosts, reference_saved: Iterable[fx.Node]
) -> BuiltProblem:
    """Linearise the budgeted problem of ``analysis`` around the plan that saves ``reference_saved``.

    The forward and backward profiles get a per-position correction that raises the model to the
    liveness simulation of the reference plan where the interval model falls short of it. (Lowering
    it where the model overestimates would make the reference exact, but would then underestimate
    every plan that does not recompute what the reference does.)
    """
    facts = analysis.facts
    # Every value outside the tangent closure can be computed in the forward and saved, including
    # backward-only ones (e.g. the softmax a cross-entropy backward reads): "recomputing" those in the
    # backward is where they would run anyway, so it costs no time.
    candidates = [
        n
        for n in analysis.order
        if n in facts and n.op == "call_function" and n not in analysis.tangent_closure
    ]
    index = {n: i for i, n in enumerate(candidates)}
    reference = set(reference_saved) & set(index)
    memo = analysis.storages

    full = step_schedule(analysis, reference)
    spine = [n for n in full.backward if n not in index]
    keep_bwd = {storage_of(n, memo) for n in (*full.fwd_outputs, *full.bwd_outputs)}
    keep_bwd |= set(tangent_storages(analysis))  # held by the caller to the backward's end
    held = {storage_of(n, memo): b for n in full.fwd_outputs for _, b in memo.allocations(n)}
    # the tangents are live from the backward's start to its end, as in the simulation
    bwd_base, _ = live_profile(spine, backward_live_in(analysis, held), keep_bwd, memo)
    # before a spine node runs, its outputs and scratch do not exist yet: what its burst runs beside
    burst_base = [
        max(live - workspace_bytes(n) - sum(b for _, b in memo.allocations(n)), 0)
        for n, live in zip(spine, bwd_base, strict=True)
    ]

    forward = [n for n in candidates if analysis.is_forward(n)]
    fwd_keep = {storage_of(n, memo) for n in full.fwd_outputs}
    fwd_base, fwd_end = live_profile(forward, {}, fwd_keep, memo)
    fwd_base.append(sum(fwd_end.values()))  # after the last node: only the user's outputs are left

    first, last, spine_last = _needs(analysis, candidates, index, spine, reference)
    direct = {i for i, t in enumerate(spine_last) if t != UNUSED}
    rec_bytes, rec_first, rec_last, bursts = _recompute_memory(candidates, index, first, last, direct, memo)
    group, group_bytes, save_last, fwd_release, burst_released = _storage_groups(
        analysis, candidates, forward, last, spine_last, memo
    )
    times = costs.linear_recompute_times(forward)
    relevant = ancestors({candidates[i] for i in direct}, within=index)
    problem = BudgetProblem(
        inputs=tuple(tuple(index[a] for a in n.all_input_nodes if a in index) for n in candidates),
        needed=tuple(sorted(direct)),
        can_save=tuple(_may_save(analysis, n, index, relevant) for n in candidates),
        can_recompute=tuple(
            facts[n].never_recompute is None or not analysis.is_forward(n) for n in candidates
        ),
        cost_s=tuple(max(costs.value(times[n]), 0.0) if n in times else 0.0 for n in candidates),
        recompute_bytes=tuple(rec_bytes),
        first=tuple(rec_first),
        last=tuple(rec_last),
        group=tuple(group),
        group_bytes=tuple(group_bytes),
        save_last=tuple(save_last),
        fwd_release=tuple(fwd_release),
        bwd_base=tuple(bwd_base),
        fwd_base=tuple(fwd_base),
        save_extra_end=tuple(_backward_only_chains(analysis, candidates, index)),
        bursts=bursts,
        burst_released=burst_released,
        burst_base=tuple(burst_base),
    )
    bwd_fix = _burst_correction(analysis, problem, full, index, memo)
    fwd_fix = _forward_correction(problem, full, forward, index, memo)
    # both of a position's rows are raised: where the burst's row is the higher, raising only the
    # node's own would leave the model below the reference's simulation
    problem = replace(
        problem,
        bwd_base=tuple(b + max(c, 0) for b, c in zip(bwd_base, bwd_fix, strict=True)),
        burst_base=tuple(b + max(c, 0) for b, c in zip(burst_base, bwd_fix, strict=True)),
        fwd_base=tuple(b + max(c, 0) for b, c in zip(problem.fwd_base, fwd_fix, strict=True)),
    )
    return BuiltProblem(problem, tuple(candidates))


def _may_save(
    analysis: JointGraphAnalysis, node: fx.Node, index: dict[fx.Node, int], relevant: set[fx.Node]
) -> bool:
    """Whether saving ``node`` is a decision worth a binary variable.

    Problem reductions (the answer is unchanged): a value the backward can never need is not saved; a
    view of a saveable value is not saved, its base is (same storage, and the view is rebuilt free).
    """
    facts = analysis.facts[node]
    if facts.unsaveable is not None or facts.must_recompute or node not in relevant:
        return False
    base = facts.storage_base
    if base is not node and base in index:
        base_facts = analysis.facts[base]
        return not (base_facts.unsaveable is None and not base_facts.must_recompute)
    return True


def _backward_only_chains(
    analysis: JointGraphAnalysis, candidates: list[fx.Node], index: dict[fx.Node, int]
) -> list[int]:
    """For each backward-only candidate: bytes of the backward-only values it is computed from."""
    extra = [0] * len(candidates)
    backward_only = {n for n in candidates if not analysis.is_forward(n)}
    for node in backward_only:
        chain = ancestors({node}, within=backward_only) - {node}
        extra[index[node]] = sum(b for a in chain for _, b in analysis.storages.allocations(a))
    return extra


def _needs(
    analysis: JointGraphAnalysis,
    candidates: list[fx.Node],
    index: dict[fx.Node, int],
    spine: list[fx.Node],
    reference: set[fx.Node],
) -> tuple[list[int], list[int], list[int]]:
    """First/last backward positions needing each candidate (through the recompute chains the
    reference implies), and the last position at which the backward's own nodes read each, or need
    it as a gradient the forward computed (UNUSED: only recomputations read it)."""
    first = [UNUSED] * len(candidates)
    last = [UNUSED] * len(candidates)

    def need(i: int, start: int, end: int) -> None:
        first[i] = start if first[i] == UNUSED else min(first[i], start)
        last[i] = max(last[i], end)

    for t, node in enumerate(spine):
        for arg in node.all_input_nodes:
            if arg in index:
                need(index[arg], t, t)
    end = max(len(spine) - 1, 0)
    for node in analysis.tangent_free_grads:
        if node in index:  # a backward output computed in the forward: needed when the backward ends
            need(index[node], end, end)
    spine_last = list(last)
    for node in reversed(candidates):
        i = index[node]
        if first[i] == UNUSED or node in reference:
            continue  # not needed, or the reference saves it: its inputs are not read to rebuild it
        for arg in node.all_input_nodes:
            if arg in index:  # `node` is recomputed once, just before its first use: inputs read then
                need(index[arg], first[i], first[i])
    _behind_saved(candidates, index, reference, first, last)
    return first, last, spine_last


def _behind_saved(
    candidates: list[fx.Node],
    index: dict[fx.Node, int],
    reference: set[fx.Node],
    first: list[int],
    last: list[int],
) -> None:
    """Positions for the values the reference never needs because it saves what reads them.

    Another plan may recompute such a value (to rebuild a reader it does not save), or save it for
    that rebuild; without a position its bytes would be charged nowhere (act-sized GPT-2 at 0.5: an
    MLP's recomputed up-projection and GELU, 40 MB the program missed, so its plans simulated 69%
    above their model peak). Each gets the earliest position a reader would be rebuilt at, were
    every reader between it and the backward rebuilt, and the latest (a saved value is held until
    then). The reference's own values keep theirs, even where a rebuilt saved reader would need one
    earlier: the model is exact at its reference and approximate elsewhere.
    """
    behind_first = [UNUSED] * len(candidates)
    behind_last = [UNUSED] * len(candidates)
    for node in reversed(candidates):
        i = index[node]
        if first[i] != UNUSED and node not in reference:
            continue  # its inputs were given positions by the reference's own chains
        start = first[i] if first[i] != UNUSED else behind_first[i]
        if start == UNUSED:
            continue
        end = last[i] if first[i] != UNUSED else behind_last[i]
        for arg in node.all_input_nodes:
            j = index.get(arg)
            if j is not None and first[j] == UNUSED:
                behind_first[j] = start if behind_first[j] == UNUSED else min(behind_first[j], start)
                behind_last[j] = max(behind_last[j], end)
    for j, start in enumerate(behind_first):
        if start != UNUSED:
            first[j], last[j] = start, behind_last[j]


def _recompute_memory(
    candidates: list[fx.Node],
    index: dict[fx.Node, int],
    first: list[int],
    last: list[int],
    direct: set[int],
    memo: StorageIndex,
) -> tuple[list[int], list[int], list[int], tuple[tuple[int, tuple[int, ...]], ...]]:
    """Bytes and live interval of each candidate's storage when it is recomputed, and the bursts.

    A storage the backward's own nodes read is charged to the node that allocates it, over the union
    of the intervals of every value aliasing it. One that only recomputations read is made and used
    up by the burst before its first position: it is charged step by step there (``bursts``), not
    all at once (act-sized GPT-2: a GELU chain of seven 4 MB values recomputed for one matmul holds
    two at a time, where charging all seven overestimated that position by 13 MB). Each step holds
    the burst's storages from their producer to their last reader in the burst, in joint order, as
    the rewrite runs them. (Where the reference's recomputations read such a storage again later, it
    would live on to then; charging that interval measured worse plans: positions taken from the
    reference's chains misplace it in most other plans, and the least peak found on the quick
    ResNet rose 36%.) ``_burst_correction`` raises what remains below the reference plan's
    simulation.
    """
    members: dict[StorageKey, list[int]] = {}
    for node in candidates:
        members.setdefault(storage_of(node, memo), []).append(index[node])
    rec_bytes = [0] * len(candidates)
    rec_first, rec_last = [UNUSED] * len(candidates), [UNUSED] * len(candidates)
    made: dict[int, list[tuple[int, int]]] = {}  # position -> (producer, last reader) per storage
    for node in candidates:
        allocated = memo.allocations(node)
        if not allocated:
            continue
        i = index[node]
        rec_bytes[i] = sum(b for _, b in allocated)
        aliases = [j for key, _ in allocated for j in members.get(key, ()) if first[j] != UNUSED]
        if first[i] == UNUSED or not aliases:
            continue  # no plan recomputes it
        start = min(first[j] for j in aliases)
        if direct.intersection(aliases):
            rec_first[i], rec_last[i] = start, max(last[j] for j in aliases)
            continue
        readers = [
            index[u] for j in aliases for u in candidates[j].users if u in index and first[index[u]] == start
        ]
        made.setdefault(start, []).append((i, max([*aliases, *readers])))
    bursts = []
    for t, lives in sorted(made.items()):
        steps = [frozenset(v for v, end in lives if v <= k <= end) for k, _ in lives]
        for step in dict.fromkeys(steps):
            if not any(step < other for other in steps):
                bursts.append((t, tuple(sorted(step))))
    return rec_bytes, rec_first, rec_last, tuple(bursts)


def _storage_groups(
    analysis: JointGraphAnalysis,
    candidates: list[fx.Node],
    forward: list[fx.Node],
    last: list[int],
    spine_last: list[int],
    memo: StorageIndex,
) -> tuple[list[int], list[int], list[int], list[int], tuple[tuple[int, tuple[int, ...]], ...]]:
    """Storage group of each candidate, and per group: bytes, last backward use, forward release;
    and the groups whose last reader is a recomputation, by the position its burst serves (they are
    live at the backward's own nodes up to the one before: ``BudgetProblem.burst_released``)."""
    fwd_pos = {n: t for t, n in enumerate(forward)}
    end_of_forward = len(forward) - 1  # a saved backward-only value counts from the forward's end
    groups: dict[StorageKey, int] = {}
    group: list[int] = []
    group_bytes: list[int] = []
    save_last: list[int] = []
    read_by_spine: list[int] = []
    fwd_release: list[int] = []
    for i, node in enumerate(candidates):
        key = storage_of(node, memo)
        if key not in groups:
            groups[key] = len(group_bytes)
            base = analysis.facts[node].storage_base
            group_bytes.append(analysis.facts[base].save_bytes if base.op != "placeholder" else 0)
            save_last.append(UNUSED)
            read_by_spine.append(UNUSED)
            fwd_release.append(fwd_pos.get(base, 0 if base.op == "placeholder" else end_of_forward))
        g = groups[key]
        group.append(g)
        save_last[g] = max(save_last[g], last[i])
        read_by_spine[g] = max(read_by_spine[g], spine_last[i])
        users = [fwd_pos[u] for u in node.users if u in fwd_pos]
        fwd_release[g] = max([fwd_release[g], fwd_pos.get(node, end_of_forward), *users])
    released: dict[int, list[int]] = {}
    for g, t in enumerate(save_last):
        if t != UNUSED and read_by_spine[g] < t and group_bytes[g]:
            released.setdefault(t, []).append(g)
            save_last[g] = t - 1  # UNUSED when that is the backward's first position
    by_position = tuple((t, tuple(gs)) for t, gs in sorted(released.items()))
    return group, group_bytes, save_last, fwd_release, by_position


def _burst_correction(
    analysis: JointGraphAnalysis,
    problem: BudgetProblem,
    full: StepSchedule,
    index: dict[fx.Node, int],
    memo: StorageIndex,
) -> list[int]:
    """Per backward position: simulated minus modelled live bytes of the reference plan.

    The simulated value at a backward node is the highest live total from the recomputation that
    runs just before it through the node itself, so a burst of recomputation is charged to the
    backward node it serves.
    """
    fwd_keep = {storage_of(n, memo) for n in (*full.saved, *full.fwd_outputs)}
    _, live = live_profile(full.forward, {}, fwd_keep, memo)
    bwd_keep = {storage_of(n, memo) for n in (*full.fwd_outputs, *full.bwd_outputs)}
    bwd_keep |= set(tangent_storages(analysis))
    simulated, _ = live_profile(full.backward, backward_live_in(analysis, live), bwd_keep, memo)
    saved = {index[n] for n in full.saved if n in index}
    modelled = modelled_backward(problem, saved)
    correction: list[int] = []
    burst = 0
    for node, value in zip(full.backward, simulated, strict=True):
        burst = max(burst, value)
        if node in index:
            continue
        correction.append(burst - modelled[len(correction)])
        burst = 0
    return correction


def _forward_correction(
    problem: BudgetProblem,
    full: StepSchedule,
    forward: list[fx.Node],
    index: dict[fx.Node, int],
    memo: StorageIndex,
) -> list[int]:
    """Per forward position: simulated minus modelled live bytes of the reference plan.

    The model's forward runs every forward node and nothing else; the real one skips nodes only the
    recomputation would need and runs saved backward-only values (and what they need) too. Simulated
    values are charged to the next forward node the model knows, or to the end of the forward.
    """
    keep = {storage_of(n, memo) for n in (*full.saved, *full.fwd_outputs)}
    simulated, live = live_profile(full.forward, {}, keep, memo)
    position = {n: t for t, n in enumerate(forward)}
    end = len(forward)
    observed: dict[int, int] = {end: sum(live.values())}
    pending = 0
    for node, value in zip(full.forward, simulated, strict=True):
        pending = max(pending, value)
        if node in position:
            observed[position[node]] = pending
            pending = 0
    observed[end] = max(observed[end], pending)
    modelled = modelled_forward(problem, {index[n] for n in full.saved if n in index})
    # where the real forward skips a node, the model stays pessimistic
    return [observed[t] - m if t in observed else 0 for t, m in enumerate(modelled)]
