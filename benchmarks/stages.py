"""Where a partition's time goes, from its plans' ``solver_stats["stage_seconds"]`` (the partitioner's
``StageClock``: each second charged to the innermost stage running, so the stages add up to the
partition's time). The stages are grouped by what they are made of, so a table shows which part a
speed-up has to come from: our analysis and min-cuts (Python), torch's own partitioner (its knob's
runs, the split), the MILP's stages (HiGHS' solves in turn, with the Python that builds their
programs and simulates their answers) and the check's Inductor lowerings. A solve run ahead shows
only as the wait of the stage that takes it; under Inductor the check's lowerings ahead share the
GIL with whatever the search's thread runs meanwhile, which that stage's seconds then include.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: column -> the stages it sums ("<solver> <what>" for the search's solver stages)
GROUPS: dict[str, tuple[str, ...]] = {
    "analysis": ("analyse", "runtime-optimal cut"),
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
#: the rest: the partition's and the search's own bookkeeping, building the plan's record
OTHER = "other"
COLUMNS = (*GROUPS, OTHER)


def grouped(stage_seconds: Mapping[str, float]) -> dict[str, float]:
    """``stage_seconds`` summed into ``COLUMNS``; stages in no group under ``OTHER``."""
    known = {stage: column for column, stages in GROUPS.items() for stage in stages}
    sums = dict.fromkeys(COLUMNS, 0.0)
    for stage, seconds in stage_seconds.items():
        sums[known.get(stage, OTHER)] += seconds
    return sums


def summed(plans_stages: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The grouped stages of several plans (one compile's graphs) added up."""
    total = dict.fromkeys(COLUMNS, 0.0)
    for stages in plans_stages:
        for column, seconds in grouped(stages).items():
            total[column] += seconds
    return total


def header() -> str:
    return "| " + " s | ".join(COLUMNS) + " s |"


def cells(sums: Mapping[str, float]) -> str:
    return " | ".join(f"{sums[column]:.2f}" for column in COLUMNS)
