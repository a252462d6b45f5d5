"""Where a partition's time goes, from its plans' ``solver_stats["stage_seconds"]`` (the partitioner's
``StageClock``: each second charged to the innermost stage running, so the stages add up to the
partition's time). The stages are grouped by what they are made of, so a table shows which part a
speed-up has to come from: torch's own code (the split, torch's knob), our Python (analysis, the
min-cuts, simulations), HiGHS' solves in turn, or the Inductor lowerings of the check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: column -> the stages it sums ("<solver> <what>" for the search's solver stages)
GROUPS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare", "runtime-optimal cut"),
    "min-cuts, greedy": (
        "least-bytes cut",
        "min-cut explore",
        "greedy prepare",
        "greedy explore",
        "greedy budget",
    ),
    "torch knob": ("torch-knob explore",),
    "MILP": ("milp ahead", "milp fastest", "milp explore", "milp budget"),
    "check": ("check",),
    "split": ("split",),
}
OTHER = "other"


def grouped(stage_seconds: Mapping[str, float]) -> dict[str, float]:
    """``stage_seconds`` summed into ``GROUPS``' columns; stages in none of them under ``OTHER``."""
    known = {stage: column for column, stages in GROUPS.items() for stage in stages}
    sums = dict.fromkeys([*GROUPS, OTHER], 0.0)
    for stage, seconds in stage_seconds.items():
        sums[known.get(stage, OTHER)] += seconds
    return sums


def summed(plans_stages: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The grouped stages of several plans (one compile's graphs) added up."""
    total = dict.fromkeys([*GROUPS, OTHER], 0.0)
    for stages in plans_stages:
        for column, seconds in grouped(stages).items():
            total[column] += seconds
    return total


def header() -> str:
    columns = [*GROUPS, OTHER]
    return "| " + " s | ".join(columns) + " s |"


def cells(sums: Mapping[str, float]) -> str:
    return " | ".join(f"{sums[column]:.2f}" for column in [*GROUPS, OTHER])
