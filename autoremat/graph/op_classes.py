"""Named classes of operators, the vocabulary the recompute rules are written in.

Each class is a small predicate over an FX node, in the spirit of JAX's remat policies: the solver asks
"may this node be recomputed?" and the answer is composed from these names, never from ad-hoc checks
scattered through the solver. Membership comes from torch's own op tags where they exist (``pointwise``,
``reduction``, ``nondeterministic_seeded``, ``is_view``, schema mutability) and from short explicit lists
where they do not.
"""

from __future__ import annotations

import operator
import weakref
from enum import Enum

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat

aten = torch.ops.aten
prims = torch.ops.prims


class OpClass(str, Enum):
    """What kind of work a node is; decides whether recomputing it is cheap, costly or forbidden."""

    PLACEHOLDER = "placeholder"
    VIEW = "view"  # aliases its input: free to recompute, no data moved
    POINTWISE = "pointwise"  # memory-bound; Inductor fuses it into neighbours
    REDUCTION = "reduction"  # memory-bound; reads its input once
    DATA_MOVEMENT = "data_movement"  # copies/gathers/concats: memory-bound
    FACTORY = "factory"  # creates a tensor from constants: nearly free
    SYMBOLIC = "symbolic"  # integer/shape arithmetic on SymInts
    GETITEM = "getitem"  # picks one output of a multi-output node
    COMPUTE_INTENSIVE = "compute_intensive"  # matmul, convolution, attention: keep unless memory forces
    RANDOM = "random"  # draws fresh random numbers: recomputing would change them
    COLLECTIVE = "collective"  # communicates across ranks
    EFFECTFUL = "effectful"  # has side effects beyond its outputs
    MUTATION = "mutation"  # writes into an existing tensor
    OPAQUE = "opaque"  # anything we know nothing about (custom ops, HOPs)


# Reductions torch does not tag as such (or tags inconsistently across versions) but which are
# memory-bound single-pass kernels after Inductor's decompositions.
_EXTRA_REDUCTIONS = frozenset(
    {
        aten.sum,
        aten.mean,
        aten.amax,
        aten.amin,
        aten.max,
        aten.min,
        aten.argmax,
        aten.argmin,
        aten.var,
        aten.std,
        aten.var_mean,
        aten.any,
        aten.all,
        aten.prod,
        aten.logsumexp,
        aten._softmax,
        aten._log_softmax,
        aten.native_layer_norm,
        aten._grad_sum_to_size,
        aten.sum_to_size,
        prims.sum,
        prims.var,
        prims.prepare_softmax_online,
    }
)

_DATA_MOVEMENT = frozenset(
    {
        aten.clone,
        aten._to_copy,
        aten.to,
        aten.type_as,
        aten.copy,
        aten.cat,
        aten.stack,
        aten.index,
        aten.index_select,
        aten.gather,
        aten.embedding,
        aten.constant_pad_nd,
        aten.slice_scatter,
        aten.select_scatter,
        aten.diagonal_scatter,
        aten.as_strided_scatter,
        aten.triu,
        aten.tril,
        aten.where,
        aten.broadcast_tensors,
        aten.repeat,
        aten.flip,
        aten.roll,
        aten.expand_copy,
        aten.permute_copy,
        aten.view_copy,
        aten._unsafe_view,
        aten.reshape,
        aten.contiguous,
        aten.maximum,
        aten.minimum,
        aten.isinf,
        prims.convert_element_type,
        prims.broadcast_in_dim,
        prims._low_memory_max_pool_offsets_to_indices,
    }
)

_FACTORY = frozenset(
    {
        aten.full,
        aten.full_like,
        aten.zeros,
        aten.zeros_like,
        aten.ones,
        aten.ones_like,
        aten.empty,
        aten.empty_like,
        aten.empty_strided,
        aten.new_zeros,
        aten.new_ones,
        aten.new_full,
        aten.new_empty,
        aten.scalar_tensor,
        aten.arange,
        aten.lift_fresh_copy,
        aten.lift_fresh,
        prims.iota,
    }
)

#: Fused attention kernels (SDPA and its backends), forward and backward.
ATTENTION_FORWARD = frozenset(
    {
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention,
        aten._flash_attention_forward,
        aten._efficient_attention_forward,
    }
)
ATTENTION_BACKWARD = frozenset(
    {
        aten._scaled_dot_product_flash_attention_backward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward,
        aten._scaled_dot_product_efficient_attention_backward,
        aten._scaled_dot_product_cudnn_attention_backward,
        aten._flash_attention_backward,
        aten._efficient_attention_backward,
    }
)

_COMPUTE_INTENSIVE = (
    ATTENTION_FORWARD
    | ATTENTION_BACKWARD
    | frozenset(
        {
            aten.mm,
            aten.bmm,
            aten.addmm,
            aten.baddbmm,
            aten.matmul,
            aten.convolution,
            aten.convolution_backward,
            aten._convolution,
            aten._scaled_mm,
            aten.upsample_bilinear2d,
            aten._weight_int4pack_mm,
            aten._weight_int8pack_mm,
        }
    )
)

#: Random ops whose values are a pure function of an explicit seed input. Recomputing them with the
#: same seed reproduces the forward's numbers exactly, so they are not RANDOM in our sense.
_SEEDED_DETERMINISTIC = frozenset(
    {"prims.inductor_random", "prims.inductor_randint", "prims.inductor_lookup_seed"}
)


def _packet(target: object) -> object:
    return getattr(target, "overloadpacket", None)


def _packet_name(target: object) -> str:
    packet = _packet(target)
    return f"{packet._qualified_op_name.replace('::', '.')}" if packet is not None else ""


def bound_args(node: fx.Node) -> dict[str, object]:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    bound = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    bound.update({a.name: v for a, v in zip(schema.arguments, node.args, strict=False)})
    bound.update(node.kwargs)
    return bound


def _draws_random_numbers(node: fx.Node) -> bool:
    """Tagged nondeterministic_seeded, unless the only randomness is a dropout with p == 0 (attention
    kernels carry the tag for their optional dropout)."""
    if torch.Tag.nondeterministic_seeded not in node.target.tags:
        return False
    dropout_p = bound_args(node).get("dropout_p")
    return not (isinstance(dropout_p, (int, float)) and dropout_p == 0)


#: classify's answers per node: the memory model asks for every node of every plan it simulates
#: (hundreds of thousands of calls on a 5,000-node graph); weak, so graphs are not kept alive
_CLASSES: weakref.WeakKeyDictionary[fx.Node, tuple[object, object, object, OpClass]] = (
    weakref.WeakKeyDictionary()
)


def classify(node: fx.Node) -> OpClass:
    """The OpClass of one node (cached while its target and arguments stay the same objects)."""
    known = _CLASSES.get(node)
    if known is not None and known[0] is node.target and known[1] is node.args and known[2] is node.kwargs:
        return known[3]
    op_class = _classify(node)
    _CLASSES[node] = (node.target, node.args, node.kwargs, op_class)
    return op_class


def _classify(node: fx.Node) -> OpClass:
    """Order matters: hazards (mutation, randomness, effects) win."""
    if node.op == "placeholder":
        return OpClass.PLACEHOLDER
    if node.op != "call_function":
        return OpClass.OPAQUE
    target = node.target
    if target is operator.getitem:
        return OpClass.GETITEM
    if compat.is_with_effects(node):
        return OpClass.EFFECTFUL
    if compat.is_higher_order_op(target):
        return OpClass.OPAQUE
    if not compat.is_op_overload(target):
        # Python-level callables in the joint graph are SymInt arithmetic (operator.mul, sym_size...).
        return OpClass.SYMBOLIC if compat.is_sym_node(node) else OpClass.OPAQUE
    if target.namespace == compat.collective_namespace:
        return OpClass.COLLECTIVE
    if target._schema.is_mutable:
        return OpClass.MUTATION
    if _packet_name(target) in _SEEDED_DETERMINISTIC:
        return OpClass.POINTWISE
    tags = set(target.tags)
    if _draws_random_numbers(node):
        return OpClass.RANDOM
    if getattr(target, "is_view", False):
        return OpClass.VIEW
    packet = _packet(target)
    if packet in _COMPUTE_INTENSIVE:
        return OpClass.COMPUTE_INTENSIVE
    if packet in _FACTORY:
        return OpClass.FACTORY
    if torch.Tag.reduction in tags or packet in _EXTRA_REDUCTIONS:
        return OpClass.REDUCTION
    if torch.Tag.pointwise in tags:
        return OpClass.POINTWISE
    if packet in _DATA_MOVEMENT:
        return OpClass.DATA_MOVEMENT
    if compat.is_sym_node(node):
        return OpClass.SYMBOLIC
    return OpClass.OPAQUE


#: Classes whose recomputation is cheap (memory-bound or free) under Inductor's fusion.
CHEAP = frozenset(
    {
        OpClass.VIEW,
        OpClass.POINTWISE,
        OpClass.REDUCTION,
        OpClass.DATA_MOVEMENT,
        OpClass.FACTORY,
        OpClass.SYMBOLIC,
        OpClass.GETITEM,
    }
)

#: Classes that are correct to recompute, however expensive.
RECOMPUTABLE = CHEAP | {OpClass.COMPUTE_INTENSIVE}

#: Classes never recomputed: new random values, repeated communication, side effects, or ops we cannot
#: see into (a custom op or higher-order op may hide randomness or state; saving it is always correct).
NEVER_RECOMPUTE = frozenset(
    {OpClass.RANDOM, OpClass.COLLECTIVE, OpClass.EFFECTFUL, OpClass.MUTATION, OpClass.OPAQUE}
)
