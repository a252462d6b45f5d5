"""The replay of Inductor's memory plan (cost_models/inductor_memory.py) on hand-made plans: what a
generated wrapper's allocations, reuses, holds and frees keep alive."""

from __future__ import annotations

from autoremat._torch_compat import MemoryEvent
from autoremat.cost_models.inductor_memory import _replay


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
