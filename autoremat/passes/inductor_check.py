"""Checking plans against the schedule Inductor will run (docs/architecture.md, "Memory under
Inductor").

The solvers plan with the op-by-op memory model: exact for the codegen-free compiler, and cheap enough
to query per candidate. Inductor runs a different schedule: it fuses pointwise chains (their buffers
never exist), overwrites donated buffers in place, and can hoist a recomputation next to a fused
neighbour. The op-by-op peak is then 1.0-1.5x what runs, and the ranking of two plans can flip. The
search therefore checks its finalists with a replay of the memory plan Inductor generates for them
(``cost_models/inductor_memory.py``), which matched the measured CPU peak to a few percent, and picks
on the checked peaks. A replay costs about one lowering and scheduling of the backward, so few plans
are checked: the runtime-optimal and least-peak plans (they fix the budget's scale), then the fastest
finalists, in order, until one fits.

A check is Python work (lowering, scheduling) and the MILP's solves are HiGHS' (which releases the
GIL), so on two cores the two overlap: the search names a plan it will check before a solve whose
result that check does not depend on (``InductorCheck.prefetch``), one worker thread measures it
while the solve runs, and the search reads the measurement when it asks, as if it had replayed the
plan then (docs/architecture.md, "Checks overlap the MILP's solves"). What a check returns, and
therefore every plan, is the same as without the overlap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from typing import Any

import torch.fx as fx

from autoremat import _torch_compat as compat
from autoremat.cost_models.inductor_memory import InductorStepPeak, inductor_forward_peak, inductor_step_peak
from autoremat.graph.analysis import JointGraphAnalysis
from autoremat.passes.pool import Candidate
from autoremat.passes.rewrite import split_joint_graph

log = logging.getLogger("autoremat")

#: a measurement made ahead: the backward's replay on bound 0, the forward's peak or the exception its
#: replay raised (None where the backward's replay replayed the forward), the seconds it took
_Measured = tuple[InductorStepPeak, "int | Exception | None", float]

#: whether a check may measure plans ahead on its worker thread (``InductorCheck.prefetch``); off, it
#: replays each plan when asked (the same plans: ``benchmarks/compile_time.py`` times both and
#: compares their plans)
MEASURE_AHEAD = True


class InductorCheck:
    """The step peak of a candidate plan under Inductor's memory plan, computed once per plan.

    ``config_patches`` are the Inductor settings the real compile runs with, so that the check sees
    the same fusion and buffer reuse. Raises whatever splitting or lowering raises; the search treats
    a failed check as "no check" and plans with the op-by-op model alone.
    """

    name = "inductor-plan"

    def __init__(
        self,
        joint: fx.GraphModule,
        analysis: JointGraphAnalysis,
        config_patches: dict[str, Any],
    ) -> None:
        self.joint, self.analysis = joint, analysis
        self.config_patches = config_patches
        self._peaks: dict[tuple[fx.Node, ...], int] = {}
        self._phases: dict[tuple[fx.Node, ...], tuple[int, int]] = {}
        self.seconds = 0.0
        #: how far the op-by-op forward peak overshot Inductor's in the forwards replayed so far (the
        #: least seen), or None before the first; see ``_forward_estimate``
        self.forward_overshoot: int | None = None
        self.forward_replays = 0
        #: checked plans whose forward peak is the estimate, not a replay
        self._estimated: set[tuple[fx.Node, ...]] = set()
        #: plans measured ahead of the search's asking (``prefetch``, ``_measure``)
        self._prefetched: dict[tuple[fx.Node, ...], Future[_Measured]] = {}
        #: forward peaks a prefetch replayed for plans whose check stands on the estimate: their
        #: confirmation needs no replay
        self._spare_forwards: dict[tuple[fx.Node, ...], int] = {}
        self._worker: ThreadPoolExecutor | None = None
        #: plans measured ahead, those of them the search asked for, and the seconds it waited on
        #: checks (its own replays included)
        self.prefetches = 0
        self.prefetches_used = 0
        self.wait_seconds = 0.0

    @property
    def checks(self) -> int:
        return len(self._peaks)

    def known(self, candidate: Candidate) -> int | None:
        return self._peaks.get(candidate.cut.saved)

    def phases(self, candidate: Candidate) -> tuple[int, int] | None:
        """(forward peak, backward peak) of a checked plan; the forward's may be its estimate."""
        return self._phases.get(candidate.cut.saved)

    def peak(self, candidate: Candidate) -> int:
        saved = candidate.cut.saved
        if saved not in self._peaks:
            started = time.perf_counter()
            future = self._prefetched.pop(saved, None)
            if future is None:
                self._replay(candidate, self._forward_estimate(candidate))
            else:
                backward, forward, seconds = future.result()  # raises what the backward's raised
                self.prefetches_used += 1
                self.seconds += seconds
                bound = self._forward_estimate(candidate)
                if backward.needs_forward(bound) and isinstance(forward, Exception):
                    raise forward  # where the replay in turn would have failed
                forward_peak = forward if isinstance(forward, int) else None
                self._record(candidate, backward.on_bound(bound, forward_peak))
                if saved in self._estimated and forward_peak is not None:
                    self._spare_forwards[saved] = forward_peak
            self.wait_seconds += time.perf_counter() - started
        return self._peaks[saved]

    def prefetch(self, candidate: Candidate) -> None:
        """Start measuring ``candidate`` on the worker thread, for a search about to run a solve it
        will check this plan after: the measurement runs while HiGHS holds no GIL. The backward and
        the forward are replayed apart (the forward's estimate, ``_forward_estimate``, is the one
        the search holds when it asks: ``peak`` reads the measurement as a replay on that estimate
        would have come out, and fails only where that replay would have).

        The worker lowers with Inductor's process-wide config patched, so the caller must not
        compile or partition meanwhile; ``drain`` waits for it."""
        saved = candidate.cut.saved
        if not MEASURE_AHEAD or saved in self._peaks or saved in self._prefetched:
            return
        if not all(future.done() for future in self._prefetched.values()):
            return  # one measurement at a time: a queue would hold guesses the search may not need
        self.prefetches += 1
        log.debug("autoremat: measuring the %s plan (%d saved) ahead", candidate.source, len(saved))
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoremat-check")
        # the search's thread-local state the lowering reads (grad mode, the Python dispatcher);
        # the compile's fake mode and tracing context the replay leaves anyway
        self._prefetched[saved] = self._worker.submit(self._measure, saved, compat.carried_thread_state())

    def drain(self) -> None:
        """Wait for the worker (its measurements stay, for ``peak`` to read) and let its thread go."""
        if self._worker is not None:
            started = time.perf_counter()
            self._worker.shutdown(wait=True)
            self._worker = None
            self.wait_seconds += time.perf_counter() - started
            for future in self._prefetched.values():
                if future.exception() is not None:  # raised again if the search asks for the plan
                    log.debug("autoremat: a measurement ahead failed: %r", future.exception())

    def _measure(
        self, saved: tuple[fx.Node, ...], state: Callable[[], AbstractContextManager[None]]
    ) -> _Measured:
        """The backward's replay (on bound 0: the forward only where layout optimisation needs it
        first) and the forward's peak replayed apart, or the exception its replay raised: the
        search may not need the forward (``peak``), and must not fail for it then."""
        started = time.perf_counter()
        with state():
            fw, bw = self._split(saved)
            n = self.analysis.num_fwd_outputs
            backward = inductor_step_peak(fw, bw, n, self.config_patches, forward_bound=0, own_graphs=True)
            forward: int | Exception | None = None
            if not backward.forward_required:
                try:
                    forward = inductor_forward_peak(fw, self.config_patches, own_graphs=True)
                except Exception as exc:  # noqa: BLE001 - raised where a replay in turn would raise it
                    forward = exc
        return backward, forward, time.perf_counter() - started

    def confirm(self, candidate: Candidate) -> int:
        """The peak of ``candidate`` with its forward replayed too, for a plan about to be chosen.

        ``peak`` may stand an estimate in for the forward (``_forward_estimate``); the estimate
        assumes every plan's forward loses as much to fusion as the ones replayed, which plans that
        save different values need not (quick long_context, a byte budget: a forward estimated below
        the backward's 1,745,156 bytes peaked at 1,859,584, 0.4% over the budget). The backward's
        replay stands, so only the forward is replayed: half a check (quick llama at 0.5, two
        confirmations in a compile).
        """
        saved = candidate.cut.saved
        self.peak(candidate)  # checked first, if it never was
        if saved in self._estimated:  # the backward's replay stands: only the forward is missing
            self._estimated.discard(saved)
            started = time.perf_counter()
            forward = self._spare_forwards.pop(saved, None)
            if forward is None:
                self._idle()
                fw, _ = self._split(saved)
                forward = inductor_forward_peak(fw, self.config_patches, own_graphs=True)
                self.seconds += time.perf_counter() - started
            backward = self._phases[saved][1]
            self._peaks[saved] = max(forward, backward)
            self._phases[saved] = (forward, backward)
            self._calibrate(candidate, forward)
            self.wait_seconds += time.perf_counter() - started
        return self._peaks[saved]

    def _split(self, saved: tuple[fx.Node, ...]) -> tuple[fx.GraphModule, fx.GraphModule]:
        fw, bw = split_joint_graph(self.joint, self.analysis, saved)
        for node in (*fw.graph.nodes, *bw.graph.nodes):
            # the split shares some nodes' metadata with the joint graph, and the replay's
            # passes rewrite it: the real compile must not see the replay's fake tensors
            node.meta = dict(node.meta)
        return fw, bw

    def _calibrate(self, candidate: Candidate, forward_peak: int) -> None:
        """Learn the least overshoot of the op-by-op forward peak from a replayed forward."""
        if candidate.forward_peak:
            self.forward_replays += 1
            overshoot = max(candidate.forward_peak - forward_peak, 0)
            if self.forward_overshoot is None or overshoot < self.forward_overshoot:
                self.forward_overshoot = overshoot

    def _idle(self) -> None:
        """Wait for the worker's measurement in flight: two lowerings at once would patch
        Inductor's config (and ``get_donated_idxs``) over each other and restore each other's
        patches."""
        wait([future for future in self._prefetched.values() if not future.done()])

    def _replay(self, candidate: Candidate, bound: int | None) -> None:
        self._idle()
        started = time.perf_counter()
        fw, bw = self._split(candidate.cut.saved)
        result = inductor_step_peak(
            fw,
            bw,
            self.analysis.num_fwd_outputs,
            self.config_patches,
            forward_bound=bound,
            own_graphs=True,
        )
        self.seconds += time.perf_counter() - started
        self._record(candidate, result)

    def _record(self, candidate: Candidate, result: InductorStepPeak) -> None:
        saved = candidate.cut.saved
        self._peaks[saved] = result.peak_bytes
        self._phases[saved] = (result.forward_peak_bytes, result.backward_peak_bytes)
        if result.forward_replayed:
            self._calibrate(candidate, result.forward_peak_bytes)
        else:
            self._estimated.add(saved)
        log.debug(
            "autoremat: %s plan (%d saved) peaks at %d bytes under Inductor (op-by-op %d)",
            candidate.source,
            len(saved),
            result.peak_bytes,
            candidate.peak,
        )

    def _forward_estimate(self, candidate: Candidate) -> int | None:
        """What the forward of ``candidate`` is expected to peak at under Inductor, or None to replay
        it whatever the backward's peak.

        The op-by-op forward peak bounds Inductor's (the fused forward materialises a subset of the
        forward's buffers), so the forward is replayed only when the backward's checked peak is below
        it. That bound is loose by what fusion removes at the forward's peak: on the suite's
        transformers, the loss head's pointwise chain, the same bytes in every plan (459,776 of a
        1.3-2.4 MB bound on gpt2 and llama, in each of their plans), because every plan runs the
        same forward and differs only in what it returns. So once one forward was replayed, the bound
        less the least overshoot seen is the estimate; it spares most forward replays, about a third
        of a check's cost where the forward's bound is above the backward's peak.
        """
        if not candidate.forward_peak:
            return None
        return candidate.forward_peak - (self.forward_overshoot or 0)
