"""User options: parsing, validation, environment configuration and the cache-key fingerprint.

Options arrive three ways: ``torch.compile(..., options={...})``, ``autoremat.backend(**options)`` and
``AUTOREMAT_*`` environment variables (for trainers that only pass a backend name, e.g. torchtitan's
``--compile.backend``). Explicit options win over the environment, which wins over defaults. Everything
is validated here, once, so that a typo fails at the user's call site with a ``ValueError`` naming the
option, the bad value and what is accepted, never deep inside a compile.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from autoremat import _torch_compat as compat
from autoremat.passes.registry import DEFAULT_SOLVER, solver_names

COMPILERS = ("inductor", "eager")
#: seconds after which the budget solver stops on one graph: a safety net (solvers bound their work by
#: counts, not the clock); a search that hits it says so, and its plan may differ between runs
DEFAULT_SOLVER_TIME_LIMIT = 60.0
ENV_PREFIX = "AUTOREMAT_"

_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_BUDGET_ACCEPTS = (
    "a fraction in [0, 1] (0, 1, 0.3, '0.3'), a whole number of bytes > 1 (4000000000, '4000000000'), "
    "a size string such as '2.5GiB' or '512MB', or 'auto'"
)
_UNITS_HELP = "size units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024)"
#: a bare number written as digits only: bytes when > 1 (a decimal point or exponent makes it a fraction)
_WHOLE_RE = re.compile(r"^[+-]?[0-9]+$")


def option_label(name: str) -> str:
    """How an error names an option passed in code (``options={...}`` or ``autoremat.backend(...)``)."""
    return f"autoremat option {name}"


def env_label(name: str) -> str:
    """How an error names an option set in the environment: the variable the user actually wrote."""
    return f"environment variable {ENV_PREFIX}{name.upper()}"


@dataclass(frozen=True)
class MemoryBudget:
    """The user's memory knob, normalised.

    ``kind`` is ``"fraction"`` (0 = the least predicted peak the solvers find, 1 = the runtime-optimal
    plan's, interpolated linearly on the predicted peak), ``"bytes"`` (a cap on each graph's predicted
    peak) or ``"auto"`` (docs/architecture.md, "Memory").
    """

    kind: Literal["fraction", "bytes", "auto"]
    value: float | int | None = None

    def describe(self) -> str:
        if self.kind == "fraction":
            return f"{self.value:g}"
        if self.kind == "bytes":
            return f"{self.value} bytes"
        return "auto"


@dataclass(frozen=True)
class RematOptions:
    """Frozen, validated options for one backend instance; hashable and cheap to fingerprint."""

    memory_budget: MemoryBudget = field(default_factory=lambda: MemoryBudget("fraction", 1.0))
    compiler: str = "inductor"
    mode: str | None = None
    strict: bool = False
    #: device spec to plan for (a name from cost_models.SPECS or an alias); None = the graph's device
    device: str | None = None
    #: measure the compiling device (cached on disk) instead of trusting datasheet peaks
    calibrate: bool = False
    #: budget solver for budgets below 1.0 and byte budgets
    solver: str = "milp"
    #: seconds the budget solver may spend per graph before falling back to its best plan
    solver_time_limit: float = DEFAULT_SOLVER_TIME_LIMIT
    #: under Inductor, check the finalist plans against the memory plan Inductor generates for them
    #: (about one backward lowering each) and pick on those peaks; off: the op-by-op model alone
    inductor_check: bool = True
    #: one budget for the whole training step (``step.py``): bytes, "auto" or a fraction between
    #: the least and the runtime-optimal step peak; None = budgets per compiled graph
    step_budget: MemoryBudget | None = None
    inductor_options: tuple[tuple[str, Any], ...] = ()
    #: internal: the stable keys (``graph.analysis.stable_node_keys``) of the joint graph's nodes to
    #: save, decided for the whole step by ``step.py``; the partitioner then skips its search
    forced_saved: tuple[str, ...] | None = None

    def budget_label(self) -> str:
        """The budget as a plan reports it: the graph's own, or the step's (``step.py``), while the
        step is observed (each graph at its least peak) or as planned for the whole step."""
        if self.step_budget is None:
            return self.memory_budget.describe()
        stage = "observing" if self.forced_saved is None else "planned"
        return f"step {self.step_budget.describe()} ({stage})"

    def fingerprint(self) -> str:
        """Stable digest of every field; part of the partitioner's cache key."""
        text = repr(
            (
                self.memory_budget.kind,
                self.memory_budget.value,
                self.compiler,
                self.mode,
                self.strict,
                self.device,
                self.calibrate,
                self.solver,
                self.solver_time_limit,
                self.inductor_check,
                None if self.step_budget is None else (self.step_budget.kind, self.step_budget.value),
                tuple((k, repr(v)) for k, v in self.inductor_options),
                self.forced_saved,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()


def parse_size(value: Any, *, where: str = option_label("memory_budget")) -> int:
    """Bytes from an int or a size string ('2.5GiB', '512MB', '1e9'); raises ValueError otherwise.

    ``where`` names the source in the error (an option or an environment variable).
    """
    if isinstance(value, bool):
        raise ValueError(f"{where}={value!r} is invalid: expected {_BUDGET_ACCEPTS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}={value!r} is invalid: a byte budget must be >= 0")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit = float(match.group(1)), (match.group(2) or "B").upper()
            if unit in _UNITS and math.isfinite(number):
                return int(number * _UNITS[unit])
        raise ValueError(f"{where}={value!r} is invalid: expected {_BUDGET_ACCEPTS}; {_UNITS_HELP}")
    raise ValueError(f"{where}={value!r} is invalid: expected {_BUDGET_ACCEPTS}")


def _budget_from_number(number: float | int, value: Any, where: str) -> MemoryBudget:
    """The one rule every spelling of a bare number follows (Python value or text alike).

    In [0, 1] it is a fraction (so ``1``, ``"1"`` and ``1.0`` all mean the runtime-optimal plan: a cap
    of 0 or 1 byte is meaningless, users writing them mean torch's fractions); above 1 it is bytes,
    and then it must be written as a whole number, because ``1.5`` is far more likely a mistyped
    fraction than one and a half bytes.
    """
    whole = isinstance(number, int)
    if not whole and not math.isfinite(number):
        raise ValueError(
            f"{where}={value!r} is invalid: the budget must be a finite number; expected {_BUDGET_ACCEPTS}"
            " (for no recomputation beyond the runtime-optimal plan, pass 1)"
        )
    if 0.0 <= number <= 1.0:
        return MemoryBudget("fraction", float(number))
    if number > 1.0 and whole:
        return MemoryBudget("bytes", number)
    if number < 0:
        raise ValueError(f"{where}={value!r} is invalid: a budget must be >= 0; expected {_BUDGET_ACCEPTS}")
    raise ValueError(
        f"{where}={value!r} is out of range: a fraction must lie in [0, 1]; for an absolute cap write "
        f"a whole number of bytes or a size string such as '2.5GiB'"
    )


def parse_memory_budget(value: Any, *, where: str = option_label("memory_budget")) -> MemoryBudget:
    """Normalise any accepted budget spelling into a MemoryBudget (docs/architecture.md, "Memory").

    The same text means the same thing whether it is a Python value or a string (an environment
    variable is always a string): ``1`` and ``"1"`` are the fraction 1.0, ``4000000000`` and
    ``"4000000000"`` are bytes, ``0.3`` and ``"0.3"`` are the fraction 0.3.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}={value!r} is invalid: expected {_BUDGET_ACCEPTS}")
    if isinstance(value, (int, float)):
        return _budget_from_number(value, value, where)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return MemoryBudget("auto")
        try:
            number = float(text)
        except ValueError:
            return MemoryBudget("bytes", parse_size(text, where=where))
        return _budget_from_number(int(text) if _WHOLE_RE.match(text) else number, value, where)
    raise ValueError(
        f"{where}={value!r} (type {type(value).__name__}) is invalid: expected {_BUDGET_ACCEPTS}"
    )


def _parse_choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive), or a ValueError naming the source and the choices."""
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(
            f"{where}={value!r} is invalid: accepted values are {', '.join(repr(c) for c in choices)}"
        )
    return value.strip().lower()


def _parse_mode(value: Any, where: str = "autoremat mode") -> str | None:
    if value is None:
        return None
    accepted = compat.inductor_mode_names()
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(
            f"{where}={value!r} is invalid: accepted values are {', '.join(repr(m) for m in accepted)}"
        )
    return None if value == "default" else value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{where}={value!r} is invalid: expected a bool (or one of {_TRUE + _FALSE})")


def _parse_device(value: Any, where: str = option_label("device")) -> str | None:
    from autoremat.cost_models.device_specs import spec_names

    if value is None:
        return None
    names = spec_names()
    if not isinstance(value, str) or value.strip().lower() not in names:
        raise ValueError(
            f"{where}={value!r} is invalid: accepted values are None (the graph's "
            f"device) or one of {', '.join(repr(n) for n in names)}"
        )
    return value.strip().lower()


def _parse_time_limit(value: Any, where: str = option_label("solver_time_limit")) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"{where}={value!r} is invalid: expected a positive number of "
            f"seconds (default {DEFAULT_SOLVER_TIME_LIMIT:g})"
        )
    return number


#: how each of our own options is parsed: (raw value, the source's name for errors) -> normalised value
_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "memory_budget": lambda v, where: parse_memory_budget(v, where=where),
    "compiler": lambda v, where: _parse_choice(where, v, COMPILERS),
    "mode": _parse_mode,
    "strict": lambda v, where: _parse_bool(where, v),
    "device": _parse_device,
    "calibrate": lambda v, where: _parse_bool(where, v),
    "solver": lambda v, where: _parse_choice(where, v, solver_names()),
    "solver_time_limit": _parse_time_limit,
    "inductor_check": lambda v, where: _parse_bool(where, v),
    "step_budget": lambda v, where: None if v is None else parse_memory_budget(v, where=where),
}
_DEFAULTS: dict[str, Any] = {
    "memory_budget": 1.0,
    "compiler": "inductor",
    "mode": None,
    "strict": False,
    "device": None,
    "calibrate": False,
    "solver": DEFAULT_SOLVER,
    "solver_time_limit": DEFAULT_SOLVER_TIME_LIMIT,
    "inductor_check": True,
    "step_budget": None,
}


def _check_inductor_option(key: str, value: Any) -> None:
    """Inductor keys pass through; we check the key exists and basic types match its default."""
    default = getattr(compat.inductor_config, key)
    for scalar in (bool, int, float, str):
        if type(default) is scalar:
            ok = isinstance(value, scalar) and not (scalar is int and isinstance(value, bool))
            if scalar is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ValueError(
                    f"autoremat passes option {key!r} to Inductor, which expects a "
                    f"{scalar.__name__} (default {default!r}); got {value!r}"
                )
            return


_OWN_KEYS = (
    "memory_budget",
    "compiler",
    "mode",
    "strict",
    "device",
    "calibrate",
    "solver",
    "solver_time_limit",
    "inductor_check",
    "step_budget",
)
_RESERVED_INDUCTOR_KEYS = ("custom_partitioner_fn",)


def _is_inductor_key(key: str) -> bool:
    try:
        getattr(compat.inductor_config, key)
    except AttributeError:
        return False
    return True


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options set through AUTOREMAT_<NAME> variables (our own keys only)."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for key in _OWN_KEYS:
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is not None and raw != "":
            found[key] = raw
    unknown = sorted(
        k for k in environ if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() not in _OWN_KEYS
    )
    if unknown:
        raise ValueError(
            f"unknown autoremat environment variable(s) {unknown}: accepted are "
            f"{', '.join(ENV_PREFIX + k.upper() for k in _OWN_KEYS)}"
        )
    return found


def resolve_options(
    options: Mapping[str, Any] | None = None,
    *,
    mode: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RematOptions:
    """Merge defaults < environment < explicit options and validate every value.

    Every environment value is validated, even one an explicit option overrides, and its errors name
    the variable: a mistyped ``AUTOREMAT_*`` must not go unnoticed just because this call (for
    example ``autoremat.explain``) happens to pass the option too. The caller's mapping is read, never
    mutated.
    """
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"autoremat options must be a dict, got {type(options).__name__}: {options!r}")
    explicit: dict[str, Any] = dict(options or {})
    if mode is not None:
        if "mode" in explicit:
            raise ValueError("autoremat: pass mode either as torch.compile(mode=...) or in options, not both")
        explicit["mode"] = mode

    parsed = {key: _PARSERS[key](value, option_label(key)) for key, value in _DEFAULTS.items()}
    parsed.update({key: _PARSERS[key](value, env_label(key)) for key, value in from_env(environ).items()})
    inductor: dict[str, Any] = {}
    for key, value in explicit.items():
        if not isinstance(key, str):
            raise ValueError(f"autoremat option names must be strings, got {key!r}")
        if key in _OWN_KEYS:
            parsed[key] = _PARSERS[key](value, option_label(key))
            continue
        if key in _RESERVED_INDUCTOR_KEYS:
            raise ValueError(f"autoremat option {key!r} is reserved: autoremat installs its own partitioner")
        if not _is_inductor_key(key):
            raise ValueError(
                f"unknown autoremat option {key!r} (value {value!r}): accepted are "
                f"{', '.join(_OWN_KEYS)} or any torch._inductor.config option"
            )
        _check_inductor_option(key, value)
        inductor[key] = value

    result = RematOptions(
        **{key: parsed[key] for key in _OWN_KEYS}, inductor_options=tuple(sorted(inductor.items()))
    )
    if result.calibrate and result.device is not None:
        raise ValueError(
            f"autoremat: calibrate=True measures the device you compile on, so it cannot be combined "
            f"with device={result.device!r}; drop one of them"
        )
    given = {**from_env(environ), **explicit}
    if result.step_budget is not None and "memory_budget" in given:
        raise ValueError(
            f"autoremat: step_budget={result.step_budget.describe()} and memory_budget="
            f"{result.memory_budget.describe()} were both given; a step budget plans every compiled "
            "graph of the step together, so pass one of them"
        )
    if result.compiler == "eager" and (result.inductor_options or result.mode):
        raise ValueError(
            "autoremat: Inductor options and mode= only apply with compiler='inductor'; "
            f"got compiler='eager' with {dict(result.inductor_options) or {'mode': result.mode}}"
        )
    return result


def inductor_patches(options: RematOptions) -> dict[str, Any]:
    """The Inductor settings a compile under ``options`` runs with (besides our partitioner): the
    mode's, the ones that make the peak follow the plan below budget 1.0, and the user's own, which
    win. The partitioner's Inductor check replays plans under exactly these."""
    return {
        **compat.inductor_mode_options(options.mode),
        **(compat.inductor_peak_patches() if _budget_below_one(options) else {}),
        **dict(options.inductor_options),
    }


def _budget_below_one(options: RematOptions) -> bool:
    """Whether the budget asks for less memory than the runtime-optimal plan: only then does Inductor
    get the settings that make its peak follow the plan (at budget 1.0 it runs exactly as torch's)."""
    budget = options.memory_budget
    return options.step_budget is not None or not (budget.kind == "fraction" and budget.value >= 1.0)
