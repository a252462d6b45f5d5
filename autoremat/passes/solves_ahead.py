"""Solves started before the search asks for them, on one worker thread.

A MILP solve is a function of its program, objective and node limit (its time limit is a safety
net: an answer the limit cut short is not taken, ``MilpSolver._solve`` solves it in turn), so a
solve whose inputs are known early can run while the search's thread does other work, and its answer
is the one the search would have got in turn. HiGHS leaves
the GIL while it solves (a Python loop on another thread ran at full speed during a solve), so on
two cores a solve ahead costs the search's thread nothing but the program's assembly.

What is started is a guess: an answer never asked for is dropped. One that has not begun when asked
for is cancelled and solved in turn (waiting behind a wrong guess would be slower); one that is
running is waited for. At the end of the search a guess still running is waited for too: HiGHS
cannot be interrupted, and no thread outlives the search.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class SolvesAhead(Generic[T]):
    """Answers by key, each computed at most once, on at most one worker thread (created when the
    first solve is started; ``close`` ends it)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._worker: ThreadPoolExecutor | None = None
        #: by key: the answer, and what the key names (held, so that an ``id`` in a key is not
        #: reused while the answer waits)
        self._futures: dict[Hashable, tuple[Future[T], object]] = {}

    def start(self, key: Hashable | None, solve: Callable[[], T], *, holds: object = None) -> bool:
        """Queue ``solve`` for ``key`` (not when ``key`` is None or already queued); whether it was."""
        if not self.enabled or key is None or key in self._futures:
            return False
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoremat-solve")
        self._futures[key] = (self._worker.submit(solve), holds)
        return True

    def take(self, key: Hashable | None) -> T | None:
        """The answer started for ``key`` (waiting for it while it is being solved), or None when
        none was started or it had not begun (it is cancelled: the caller solves it in turn)."""
        entry = self._futures.pop(key, None) if key is not None else None
        if entry is None or entry[0].cancel():
            return None
        return entry[0].result()

    def cancel_pending(self) -> None:
        """Drop the answers that have not begun (the guesses they were started on proved wrong)."""
        for key in [k for k, (f, _) in self._futures.items() if f.cancel()]:
            del self._futures[key]

    def close(self) -> None:
        """Drop the answers never asked for; wait for the one being solved (a HiGHS solve cannot be
        interrupted), so no thread outlives the search."""
        self._futures.clear()
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None


def solve_key(*parts: object) -> Hashable | None:
    """``parts`` as a hashable key (lists and tuples frozen, dicts by sorted items), or None when
    something in them cannot be hashed."""
    key = _frozen(parts)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _frozen(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value
