"""Plans persisted next to Inductor's cache, so logs and reports survive cache hits.

On an AOTAutograd or FX-graph cache hit Inductor never calls the partitioner, so the plan that shaped
the cached kernels would be lost. The backend therefore keys every compile by what determines its
plans (the Dynamo graph's code, its inputs' metadata, the partitioner's cache identity), writes the
plans made under that key, and on a compile that made none reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.plan import Plan

log = logging.getLogger("autoremat")


def graph_key(gm: fx.GraphModule, example_inputs: Sequence[Any], partitioner_uuid: str) -> str:
    """Stable identity of one compile: same graph, same input metadata, same partitioner → same key."""
    parts = [gm.code, partitioner_uuid, torch.__version__]
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            parts.append(
                f"T{tuple(map(str, value.shape))}{tuple(map(str, value.stride()))}"
                f"{value.dtype}{value.device}{value.requires_grad}"
            )
        else:
            parts.append(f"{type(value).__name__}:{value}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _path(key: str) -> pathlib.Path:
    return pathlib.Path(compat.inductor_cache_dir()) / "autoremat_plans" / f"{key}.json"


def save(key: str, plans: list[Plan]) -> None:
    """Write the plans of one compile (atomically; failures only cost the report on a later hit)."""
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([p.to_dict() for p in plans], sort_keys=True))
        tmp.replace(path)
    except OSError as exc:
        log.debug("autoremat: could not store plans for %s: %s", key, exc)


def load(key: str) -> list[Plan]:
    """Plans stored for ``key``, marked ``from_cache``; [] when none (e.g. an inference graph)."""
    try:
        data = json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return []
    try:
        return [replace(Plan.from_dict(d), from_cache=True) for d in data]
    except (TypeError, KeyError) as exc:  # written by an incompatible version
        log.debug("autoremat: ignoring stored plans for %s: %s", key, exc)
        return []
