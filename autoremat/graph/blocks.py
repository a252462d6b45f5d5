"""Repeated blocks in a joint graph: the transformer layers (forward and backward) that make up most
of a real model's graph, found so the budget solver can decide once per block position instead of
once per node (``passes/block_milp.py``).

How: nodes are coloured by their op, their output's shape and dtype, which side of the step they run
on, and (for ``WL_ROUNDS`` rounds) the colours of their inputs, with every placeholder of one shape
alike (each layer has its own weights). Nodes at the same place in two copies of a block then share a
colour. The number of copies ``L`` is the commonest colour count; the colours seen ``L`` times at a
steady stride mark where each block's forward and backward lie (the backward visits blocks last to
first; the nodes between two blocks' anchors are given to one of them). A node inside a block's span
is then placed by its colour refined by inputs from its own block only (so the first block's layer
norm, which reads the embedding, looks like the others', which read the previous block) and by its
rank among that colour's nodes there. A *slot* is one such place, with its node in each block. Slots
whose nodes do not read the same slots (at the same block offset) in every copy are dropped, so the
slots describe truly isomorphic copies (on a 12-layer GPT: 948 of its 1,029 MILP candidates).

Nothing depends on this for correctness: a solver that ties decisions across a slot only restricts
the exact problem, and every plan is checked by the memory model like any other.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
import torch.fx as fx

from autoremat.graph.analysis import JointGraphAnalysis

#: rounds of input-colour refinement: enough to tell a block's ops apart by their neighbourhood, few
#: enough that the nodes at the edge of the first and last block still look like the others
WL_ROUNDS = 3
#: fewest copies (and fewest slots) worth calling a repetition
MIN_COPIES = 2
MIN_SLOTS = 4
#: how far (relative) an anchor's distance between copies may be from the commonest one
STRIDE_TOLERANCE = 0.25


@dataclass(frozen=True)
class RepeatedBlocks:
    """``slots[j][k]``: the node at place ``j`` of block ``k`` (blocks in forward order)."""

    copies: int
    slots: tuple[tuple[fx.Node, ...], ...]

    def block_of(self) -> dict[fx.Node, tuple[int, int]]:
        """Node -> (block, slot)."""
        return {node: (k, j) for j, slot in enumerate(self.slots) for k, node in enumerate(slot)}


def _value_key(val: object) -> str:
    """Shape and dtype of a node's value (of each, for several outputs), else its type."""
    if isinstance(val, torch.Tensor):
        return f"{tuple(str(s) for s in val.shape)}:{val.dtype}"
    if isinstance(val, (tuple, list)):
        return "(" + ",".join(_value_key(v) for v in val) + ")"
    return type(val).__name__


def _digest(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()


def _colours(analysis: JointGraphAnalysis, rounds: int = WL_ROUNDS) -> dict[fx.Node, str]:
    colour: dict[fx.Node, str] = {}
    for node in analysis.graph.nodes:
        side = "tangent" if node in analysis.tangent_closure else "value"
        if node.op == "placeholder":
            kind = "tangent" if node.name.startswith("tangents") else "primal"
            colour[node] = _digest("placeholder", kind, _value_key(node.meta.get("val")))
        else:
            colour[node] = _digest(node.op, str(node.target), side, _value_key(node.meta.get("val")))
    for _ in range(rounds):
        refined = {}
        for node in analysis.graph.nodes:
            if node.op == "placeholder":
                refined[node] = colour[node]
                continue
            refined[node] = _digest(colour[node], tuple(colour[a] for a in node.all_input_nodes))
        colour = refined
    return colour


def find_repeated_blocks(analysis: JointGraphAnalysis) -> RepeatedBlocks | None:
    """The repeated blocks of ``analysis``' graph, or None when it has none worth using.

    Anchor colours (seen once per block, at a steady stride) give each block's forward and backward
    a span of the graph's order; every node inside a span then belongs to that block (a colour the
    embedding or loss head shares with a block's op is seen ``m·L + r`` times), and its slot is its
    colour and its rank among that colour's nodes in the block."""
    nodes = [n for n in analysis.graph.nodes if n.op == "call_function"]
    # the backward visits blocks last to first; it starts at the first node that reads a tangent
    backward_from = min(
        (analysis.order[n] for n in nodes if n in analysis.tangent_closure), default=len(analysis.order)
    )
    colours = _colours(analysis)
    colour = {n: (colours[n], analysis.order[n] >= backward_from) for n in nodes}
    base = _colours(analysis, rounds=0)
    count = Counter(colour.values())
    exact = Counter(count[colour[n]] for n in nodes if count[colour[n]] >= MIN_COPIES)
    if not exact:
        return None
    copies = max(exact, key=lambda c: (exact[c], c))
    spans = _spans(nodes, colour, count, copies, analysis.order)
    best: list[tuple[fx.Node, ...]] = []
    for gap_to_next in (True, False):
        bounds = _widened(spans, gap_to_next)
        found = _slots(nodes, base, copies, bounds, analysis.order)
        if len(found) > len(best):
            best = found
    if len(best) < MIN_SLOTS:
        return None
    return RepeatedBlocks(copies, tuple(best))


def _widened(spans: dict[tuple[int, bool], list[int]], gap_to_next: bool) -> list[tuple[int, int, int]]:
    """(first, last, block) per block side, sorted, covering the nodes between the anchors too: the
    nodes between two blocks' anchors (a layer norm before the first anchor of the next block, a
    residual add after the last of this one) go to the next block or to this one; the first block
    (or the last) reaches as far before (after) its anchors as the shortest such gap."""
    bounds: list[tuple[int, int, int]] = []
    for backward in (False, True):
        side = sorted((lo, hi, block) for (block, b), (lo, hi) in spans.items() if b == backward)
        if not side:
            continue
        gaps = [nxt[0] - cur[1] - 1 for cur, nxt in itertools.pairwise(side)]
        reach = max(min(gaps, default=0), 0)
        for i, (lo, hi, block) in enumerate(side):
            if gap_to_next:
                lo = side[i - 1][1] + 1 if i else lo - reach
            else:
                hi = side[i + 1][0] - 1 if i + 1 < len(side) else hi + reach
            bounds.append((lo, hi, block))
    return sorted(bounds)


def _local_colours(
    nodes: list[fx.Node], base: dict[fx.Node, str], block_of: dict[fx.Node, int]
) -> dict[fx.Node, str]:
    """Colours refined by inputs within the node's own block only: an input from elsewhere (the
    embedding for the first block, the previous block for the others) is just "outside", so the
    nodes near a block's edge get the same colour in every copy."""
    colour = dict(base)
    for _ in range(WL_ROUNDS):
        refined = dict(colour)
        for node in nodes:
            block = block_of.get(node)
            reads = tuple(
                colour[a] if block is not None and block_of.get(a) == block else "outside"
                for a in node.all_input_nodes
            )
            refined[node] = _digest(colour[node], reads)
        colour = refined
    return colour


def _slots(
    nodes: list[fx.Node],
    base: dict[fx.Node, str],
    copies: int,
    bounds: list[tuple[int, int, int]],
    order: dict[fx.Node, int],
) -> list[tuple[fx.Node, ...]]:
    """The consistent slots when each block side covers ``bounds``, in graph order."""
    starts = [lo for lo, _, _ in bounds]
    block_of: dict[fx.Node, int] = {}
    for node in nodes:
        at = order[node]
        i = bisect.bisect_right(starts, at) - 1
        # neighbouring spans may overlap a little (a weight's gradient finished after the next
        # block's backward began): a node inside two spans belongs to neither
        inside = [j for j in (i - 1, i) if j >= 0 and bounds[j][0] <= at <= bounds[j][1]]
        if len(inside) == 1:
            block_of[node] = bounds[inside[0]][2]
    local = _local_colours(nodes, base, block_of)
    place: dict[fx.Node, tuple[int, tuple[object, int]]] = {}
    slots: dict[tuple[object, int], list[fx.Node | None]] = {}
    ranks: dict[tuple[int, object], int] = defaultdict(int)
    for node in nodes:
        if node not in block_of:
            continue
        block, key = block_of[node], local[node]
        slot = (key, ranks[(block, key)])
        ranks[(block, key)] += 1
        slots.setdefault(slot, [None] * copies)[block] = node
        place[node] = (block, slot)
    consistent = [row for row in slots.values() if _same_inputs(row, place)]
    consistent.sort(key=lambda row: order[row[0]])  # type: ignore[index]
    return [tuple(row) for row in consistent]  # type: ignore[misc]


def _spans(
    nodes: list[fx.Node],
    colour: dict[fx.Node, tuple[str, bool]],
    count: Counter[tuple[str, bool]],
    copies: int,
    order: dict[fx.Node, int],
) -> dict[tuple[int, bool], list[int]]:
    """(block, backward?) -> [first, last] position in the graph's order, from the *anchor* colours:
    seen once per block, at a steady stride (the block's length). A colour seen ``copies`` times by
    coincidence (three alike ops in the loss head of a 3-layer model) has no steady stride."""
    where: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for node in nodes:
        if count[colour[node]] == copies:
            where[colour[node]].append(order[node])
    spans: dict[tuple[int, bool], list[int]] = {}
    for backward in (False, True):
        rows = [sorted(at) for key, at in where.items() if key[1] == backward]
        strides = sorted(b - a for at in rows for a, b in itertools.pairwise(at))
        if not strides:
            continue
        period = strides[len(strides) // 2]
        for at in rows:
            if any(abs(b - a - period) > STRIDE_TOLERANCE * period for a, b in itertools.pairwise(at)):
                continue
            for block, position in enumerate(at):
                key = (copies - 1 - block if backward else block, backward)
                span = spans.setdefault(key, [position, position])
                span[0], span[1] = min(span[0], position), max(span[1], position)
    return spans


def _same_inputs(row: list[fx.Node | None], place: dict[fx.Node, tuple[int, tuple[object, int]]]) -> bool:
    """Whether every copy of a slot reads the same slots at the same block offsets. A read from
    outside the blocks matches a read from a neighbouring block: the first block reads the
    embedding where the others read the previous block's output (and the last block's backward
    reads the loss head's gradient)."""
    if any(node is None for node in row):
        return False
    reads = [_reads(node, block, place) for block, node in enumerate(row)]  # type: ignore[arg-type]
    reference = reads[len(reads) // 2]
    for other in reads:
        if len(other) != len(reference):
            return False
        for mine, theirs in zip(other, reference, strict=True):
            if mine == theirs:
                continue
            crossing = {mine[1], theirs[1]} - {"outside"}
            if "outside" not in (mine[1], theirs[1]) or 0 in crossing:
                return False
    return True


def _reads(
    node: fx.Node, block: int, place: dict[fx.Node, tuple[int, tuple[object, int]]]
) -> list[tuple[object, object]]:
    reads: list[tuple[object, object]] = []
    for arg in node.all_input_nodes:
        if arg in place:
            other, slot = place[arg]
            reads.append((slot, other - block))
        else:
            reads.append((arg.op if arg.op == "placeholder" else "computed", "outside"))
    return reads
