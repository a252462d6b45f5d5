"""Option parsing: every accepted spelling normalises, every bad value is a ValueError that names it."""

from __future__ import annotations

import copy

import pytest
import torch

import autoremat
from autoremat.options import MemoryBudget, parse_size, resolve_options


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.3, MemoryBudget("fraction", 0.3)),
        (0.0, MemoryBudget("fraction", 0.0)),
        (1, MemoryBudget("fraction", 1.0)),
        (0, MemoryBudget("fraction", 0.0)),
        (2_000_000, MemoryBudget("bytes", 2_000_000)),
        ("2.5GiB", MemoryBudget("bytes", int(2.5 * 2**30))),
        ("512MB", MemoryBudget("bytes", 512 * 10**6)),
        ("4096", MemoryBudget("bytes", 4096)),
        ("0.25", MemoryBudget("fraction", 0.25)),
        ("auto", MemoryBudget("auto")),
        (" AUTO ", MemoryBudget("auto")),
    ],
)
def test_memory_budget_spellings(value, expected):
    assert resolve_options({"memory_budget": value}).memory_budget == expected


@pytest.mark.parametrize(
    ("options", "must_mention"),
    [
        ({"memory_budget": 1.5}, ["memory_budget", "1.5", "[0, 1]"]),
        ({"memory_budget": -0.1}, ["memory_budget", "-0.1"]),
        ({"memory_budget": float("nan")}, ["memory_budget", "nan"]),
        ({"memory_budget": -5}, ["memory_budget", "-5", ">= 0"]),
        ({"memory_budget": "lots"}, ["memory_budget", "'lots'", "GiB"]),
        ({"memory_budget": "3 parsecs"}, ["memory_budget", "parsecs"]),
        ({"memory_budget": True}, ["memory_budget", "True"]),
        ({"memory_budget": None}, ["memory_budget", "None"]),
        ({"memory_budget": [0.5]}, ["memory_budget", "list"]),
        ({"compiler": "tvm"}, ["compiler", "'tvm'", "'inductor'", "'eager'"]),
        ({"compiler": 3}, ["compiler", "3"]),
        ({"strict": "maybe"}, ["strict", "'maybe'"]),
        ({"mode": "turbo"}, ["mode", "'turbo'", "max-autotune"]),
        ({"memroy_budget": 0.5}, ["memroy_budget", "memory_budget", "torch._inductor.config"]),
        ({"max_autotune": "yes"}, ["max_autotune", "bool", "'yes'"]),
        ({"custom_partitioner_fn": None}, ["custom_partitioner_fn", "reserved"]),
        ({"solver": "cplex"}, ["solver", "'cplex'", "'milp'", "'greedy'"]),
        ({"solver_time_limit": 0}, ["solver_time_limit", "0", "positive"]),
        ({"solver_time_limit": "soon"}, ["solver_time_limit", "'soon'"]),
        ({"solver_time_limit": True}, ["solver_time_limit", "True"]),
        ({"inductor_check": "sometimes"}, ["inductor_check", "'sometimes'", "bool"]),
        ({"compiler": "eager", "max_autotune": True}, ["compiler='eager'", "max_autotune"]),
    ],
)
def test_bad_options_raise_value_error_naming_them(options, must_mention):
    with pytest.raises(ValueError) as info:
        autoremat.backend(**options)
    for text in must_mention:
        assert text in str(info.value), (text, str(info.value))


def test_options_must_be_a_dict():
    with pytest.raises(ValueError, match="must be a dict"):
        resolve_options([("memory_budget", 0.5)])


def test_caller_dict_is_not_mutated():
    options = {"memory_budget": "1GiB", "compiler": "eager"}
    before = copy.deepcopy(options)
    resolve_options(options, environ={"AUTOREMAT_STRICT": "1"})
    assert options == before


def test_environment_configures_and_explicit_options_win():
    env = {"AUTOREMAT_MEMORY_BUDGET": "0.4", "AUTOREMAT_COMPILER": "eager"}
    opts = resolve_options(None, environ=env)
    assert opts.memory_budget == MemoryBudget("fraction", 0.4) and opts.compiler == "eager"
    assert resolve_options({"memory_budget": 0.9}, environ=env).memory_budget.value == 0.9


def test_unknown_environment_variable_is_an_error():
    with pytest.raises(ValueError, match="AUTOREMAT_BUDGET"):
        resolve_options(None, environ={"AUTOREMAT_BUDGET": "0.5"})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="AUTOREMAT_MEMORY_BUDGET='huge'"):
        resolve_options(None, environ={"AUTOREMAT_MEMORY_BUDGET": "huge"})
    with pytest.raises(ValueError, match="AUTOREMAT_STRICT='maybe'"):
        resolve_options(None, environ={"AUTOREMAT_STRICT": "maybe"})


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "Infinity", "1.5", "-1"])
def test_non_finite_or_out_of_range_budget_text_names_option_value_and_forms(text):
    # issue 14 item 8: "inf" used to fail with int()'s "invalid literal", naming nothing.
    with pytest.raises(ValueError) as info:
        resolve_options({"memory_budget": text}, environ={})
    message = str(info.value)
    assert f"memory_budget={text!r}" in message, message
    assert "invalid literal" not in message
    assert "[0, 1]" in message and ("GiB" in message or "bytes" in message), message


@pytest.mark.parametrize(
    ("literal", "text", "expected"),
    [
        (1, "1", MemoryBudget("fraction", 1.0)),
        (0, "0", MemoryBudget("fraction", 0.0)),
        (0.3, "0.3", MemoryBudget("fraction", 0.3)),
        (4000000000, "4000000000", MemoryBudget("bytes", 4_000_000_000)),
        ("2GiB", "2GiB", MemoryBudget("bytes", 2 * 2**30)),
        ("auto", "auto", MemoryBudget("auto")),
    ],
)
def test_same_budget_text_means_the_same_everywhere(literal, text, expected):
    # issue 14 item 9: AUTOREMAT_MEMORY_BUDGET=1 meant 1 byte while options={"memory_budget": 1} meant
    # the fraction 1.0. The text, as a Python literal, as a string option and in the environment, agree.
    assert resolve_options({"memory_budget": literal}, environ={}).memory_budget == expected
    assert resolve_options({"memory_budget": text}, environ={}).memory_budget == expected
    assert resolve_options(None, environ={"AUTOREMAT_MEMORY_BUDGET": text}).memory_budget == expected


def test_bad_environment_is_reported_even_when_an_explicit_option_overrides_it():
    # explain() always passes memory_budget, which used to hide a bad AUTOREMAT_MEMORY_BUDGET silently.
    with pytest.raises(ValueError, match="AUTOREMAT_MEMORY_BUDGET='inf'"):
        resolve_options({"memory_budget": 0.5}, environ={"AUTOREMAT_MEMORY_BUDGET": "inf"})


def test_explain_reports_a_bad_environment(monkeypatch):
    monkeypatch.setenv("AUTOREMAT_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="AUTOREMAT_MEMORY_BUDGET='lots'"):
        autoremat.explain(torch.nn.Linear(2, 2), torch.randn(1, 2), memory_budget=0.5)


def test_inductor_options_pass_through_and_mode_maps():
    opts = resolve_options({"max_autotune": False, "memory_budget": 0.5}, mode="reduce-overhead")
    assert dict(opts.inductor_options) == {"max_autotune": False}
    assert opts.mode == "reduce-overhead"


def test_fingerprint_changes_with_every_field():
    base = resolve_options({})
    variants = [
        resolve_options({"memory_budget": 0.5}),
        resolve_options({"memory_budget": "1GiB"}),
        resolve_options({"compiler": "eager"}),
        resolve_options({"strict": True}),
        resolve_options({"solver": "greedy"}),
        resolve_options({"solver_time_limit": 1.5}),
        resolve_options({"inductor_check": False}),
        resolve_options({"max_autotune": True}),
        resolve_options({}, mode="max-autotune"),
    ]
    prints = {base.fingerprint(), *(v.fingerprint() for v in variants)}
    assert len(prints) == len(variants) + 1


def test_parse_size_units():
    assert parse_size("1KiB") == 1024
    assert parse_size("1.5 kb") == 1500
    assert parse_size(17) == 17


def test_torch_compile_with_bad_option_surfaces_the_value_error():
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model, backend="autoremat", options={"memory_budget": 7.5})
    with pytest.raises(Exception) as info:
        compiled(torch.randn(1, 2, requires_grad=True))
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "inner_exception", None)
    assert any(isinstance(e, ValueError) and "memory_budget=7.5" in str(e) for e in chain), chain
