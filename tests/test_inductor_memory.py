"""The replay of Inductor's memory plan (cost_models/inductor_memory.py) on hand-made plans: what a
generated wrapper's allocations, reuses, holds and frees keep alive, and what the forward hands the
backward."""

from __future__ import annotations

import torch
import torch.fx as fx

from autoremat._torch_compat import MemoryEvent
from autoremat.cost_models.inductor_memory import _handoff, _replay, _returned_by_inductor


def test_freed_buffers_leave_the_live_set_and_reused_ones_do_not_count_twice():
    events = [
        MemoryEvent("alloc", "buf0", 100),
        MemoryEvent("alloc", "buf1", 200),
        MemoryEvent("free", "buf0"),
        # a storage id freed above must not be handed out while another is live (once a KeyError)
        MemoryEvent("alloc", "buf2", 300),
        MemoryEvent("reuse", "buf3", other="buf2", drop_other=True),  # buf3 takes buf2's storage
        MemoryEvent("alloc", "buf4", 50),
        MemoryEvent("free", "buf1"),
        MemoryEvent("free", "buf3"),
        MemoryEvent("free", "buf4"),
    ]
    peak, start = _replay({}, events, {})
    assert (peak, start) == (550, 0)  # buf1 + buf2/buf3 + buf4


def test_a_buffer_held_for_reuse_stays_live_until_it_is_reused():
    events = [
        MemoryEvent("alloc", "buf0", 100),
        MemoryEvent("hold", "buf0"),  # dead, but kept for a later kernel of the same size
        MemoryEvent("alloc", "buf1", 100),
        MemoryEvent("reuse", "buf2", other="buf0", drop_other=True),
    ]
    assert _replay({}, events, {})[0] == 200


def test_activation_inputs_count_once_per_storage_and_are_freed_by_the_plan():
    inputs = {"saved0": 400, "view_of_saved0": 400, "primals_1": 1000}
    live = {"saved0": "saved0", "view_of_saved0": "saved0"}  # parameters (primals_1) are not live
    events = [
        MemoryEvent("free", "saved0"),
        MemoryEvent("alloc", "buf0", 300),
        MemoryEvent("free", "view_of_saved0"),
        MemoryEvent("alloc", "buf1", 200),
    ]
    peak, start = _replay(inputs, events, live)
    assert start == 400 and peak == 700  # saved0's storage stays until its last alias is freed


def _backward(names: list[str], values: list[torch.Tensor]) -> fx.GraphModule:
    graph = fx.Graph()
    for name, value in zip(names, values, strict=True):
        graph.placeholder(name).meta["val"] = value
    graph.output(())
    return fx.GraphModule(torch.nn.Module(), graph)


def test_a_saved_input_the_compiled_forward_copies_channels_last_is_an_activation():
    """resnet under Inductor: the FX forward saves the conv weight ``primals_1`` (a parameter, so no
    activation), but the lowered forward returns a channels-last copy (``buf0``), live until the
    backward frees it; the saved conv output comes back channels-last, and the backward must be
    lowered with those strides."""
    nhwc = (2, 4, 8, 8), (256, 1, 32, 4)
    fw_inputs = {"primals_1": 576, "primals_2": 2048}
    events = [
        MemoryEvent("alloc", "buf0", 576),
        MemoryEvent("alloc", "buf1", 2048),
        MemoryEvent("alloc", "buf2", 4),
        MemoryEvent("output", "buf2", 4, layouts=(((), ()),)),  # the loss
        MemoryEvent("output", "buf0", 576, layouts=(((4, 4, 3, 3), (36, 1, 12, 4)),)),
        MemoryEvent("output", "primals_2", 0, layouts=(nhwc,)),  # the batch, returned as it is
        MemoryEvent("output", "buf1", 2048, layouts=(nhwc,)),
        MemoryEvent("output", "buf1", 2048, layouts=(nhwc,)),  # a second name for one storage
    ]
    returned = _returned_by_inductor(fw_inputs, events, 5)
    names = ["primals_1", "primals_2", "convolution", "relu", "tangents_1"]
    bw = _backward(
        names,
        [torch.empty(4, 4, 3, 3), torch.empty(2, 4, 8, 8), *[torch.empty(2, 4, 8, 8)] * 2, torch.empty(())],
    )
    handoff = _handoff(["loss", "primals_1", "primals_2", "convolution", "relu"], returned, bw)
    assert handoff.activations == {
        "primals_1": "primals_1",
        "convolution": "convolution",
        "relu": "convolution",
        "tangents_1": "tangents_1",
    }
    assert handoff.forward_end_bytes == 4 + 576 + 2048
    assert handoff.input_strides == [(36, 1, 12, 4), nhwc[1], nhwc[1], nhwc[1], None]
