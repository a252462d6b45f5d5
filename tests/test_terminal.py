"""The user's terminal stays clean (issue 14, item 14).

HiGHS ``printf``s debug lines to file descriptor 1 during some MIP solves, and torch.profiler's C++
backend (Kineto) logs ``profiler_start``/``profiler_stop`` to fd 2 on every profiled step. Neither goes
through Python's ``sys.stdout``, so these tests read the file descriptors themselves (pytest's
``capfd``).
"""

from __future__ import annotations

import ctypes
import logging
import os

import torch

import autoremat
from autoremat.passes import milp
from benchmarks.models import suite

#: text HiGHS printed on the smoke Llama's budget-0.5 MILP before it was silenced
HIGHS_TEXT = "HighsMipSolverData"


def _c_printf(text: str) -> None:
    """Write through C's buffered stdio, the way HiGHS does (a plain os.write would be unbuffered)."""
    libc = ctypes.CDLL(None)
    libc.printf(text.encode())


def test_budgeted_compile_prints_no_solver_internals(capfd):
    # The smoke Llama at budget 0.5 is a MILP on which HiGHS printed
    # "HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();" to the terminal.
    (case,) = [c for c in suite("smoke") if c.name == "llama"]
    torch.manual_seed(0)
    model = case.build().train()
    batch = case.batch(torch.device("cpu"))
    torch.compiler.reset()
    backend = autoremat.backend(memory_budget=0.5, compiler="eager")
    torch.compile(model, backend=backend)(*batch).backward()
    assert any(p.solver_stats for p in autoremat.recent_plans())  # the MILP did run
    out, err = capfd.readouterr()
    assert HIGHS_TEXT not in out and HIGHS_TEXT not in err, (out, err)
    assert "Highs" not in out + err


def test_native_output_is_hidden_then_streams_are_restored(capfd, caplog):
    with caplog.at_level(logging.INFO, logger="autoremat"), milp.native_output_to_debug_log():
        _c_printf(f"{HIGHS_TEXT}::run(); native text from inside the solve\n")
        os.write(2, f"{HIGHS_TEXT} native stderr from inside the solve\n".encode())
    os.write(1, b"after\n")
    _c_printf("buffered after\n")
    ctypes.CDLL(None).fflush(None)
    out, err = capfd.readouterr()
    assert "inside the solve" not in out + err, (out, err)
    assert "after\n" in out and "buffered after" in out  # fds 1 and 2 are back where they were


def test_other_text_written_during_a_solve_reaches_its_stream_after_it(capfd, caplog):
    """A solve running ahead on another thread keeps fds 1 and 2 swapped while the search's thread
    works: what that work writes (a warning, torch's own text) is the user's, and is written out
    when the swap ends, each to its own stream; only HiGHS' lines are kept back."""
    with caplog.at_level(logging.INFO, logger="autoremat"), milp.native_output_to_debug_log():
        os.write(2, b"a warning meanwhile\n")
        os.write(1, f"{HIGHS_TEXT}::solve debug\nprogress meanwhile\n".encode())
    out, err = capfd.readouterr()
    assert err == "a warning meanwhile\n" and out == "progress meanwhile\n", (out, err)


def test_native_output_is_logged_when_the_logger_asks(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="autoremat"), milp.native_output_to_debug_log():
        _c_printf("debugging the solver\n")
    ctypes.CDLL(None).fflush(None)
    out, _ = capfd.readouterr()
    assert "debugging the solver" in out  # at DEBUG nothing is redirected


def test_demo_prints_only_its_progress_table_and_summary(capfd):
    from autoremat.demo.__main__ import main

    args = ["--compiler", "eager", "--budgets", "0.5", "--steps", "1", "--layers", "1"]
    assert main([*args, "--d-model", "32", "--batch", "2", "--seq", "16"]) == 0
    out, err = capfd.readouterr()
    for noise in ("USDT", "profiler_start", "profiler_stop", "dynamo_pgo", "Highs"):
        assert noise not in out and noise not in err, (noise, out, err)
    assert "| autoremat budget=0.5 |" in out and "Gradient parity" in out
    assert err.strip() == "", err
