"""What planning must respect under ``torch.distributed``: every rank makes the same decisions.

Each rank compiles its graphs on its own, and nothing reconciles the plans afterwards. Ranks that
saved different tensors would differ in memory; ranks that disagreed about a collective would hang.
So decisions may only depend on inputs that are identical on every rank: the graph, the options and
datasheet device specs. Calibration measures the local device (timings vary from rank to rank and
run to run), so it is switched off when a process group of more than one rank is initialised, and the
plan says so. Ties are broken by graph order everywhere (see ``passes/mincut.py``), never by hashing.
"""

from __future__ import annotations

import logging

import torch

from autoremat.cost_models import Calibration, calibrate
from autoremat.options import RematOptions

log = logging.getLogger("autoremat")

_warned = False


def world_size() -> int:
    """Ranks in the default process group (1 when torch.distributed is absent or not initialised)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size()


def calibration_note(world: int) -> str:
    return (
        f"calibrate=True ignored under torch.distributed (world size {world}): measured timings differ "
        "between ranks and every rank must make the same decisions; planned with datasheet specs"
    )


def planning_calibration(
    options: RematOptions, device: torch.device | None
) -> tuple[Calibration | None, list[str]]:
    """(calibration to plan with, notes for the plan): the measurement, unless several ranks plan."""
    if not options.calibrate:
        return None, []
    world = world_size()
    if world <= 1:
        return calibrate(device), []
    global _warned
    note = calibration_note(world)
    if not _warned:  # once per process, not once per compiled graph
        _warned = True
        log.warning("autoremat: %s", note)
    return None, [note]
