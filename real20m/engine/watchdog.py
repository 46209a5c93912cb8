"""Hung ranks: a heartbeat the training loop updates, and a thread that ends the process when it
stops.

The loop marks each phase it enters (data, forward, backward, collective, save) and each finished
step. When no mark comes for ``timeout`` seconds, the watchdog logs one line naming the rank, the
phase and the last step, and ends the process with ``os._exit``: a thread blocked in a collective
or a data-loader wait would never see an exception, and atexit handlers could block on it as well.
Every other rank then blocks in its next collective and ends the same way, and torchrun restarts
the job (MAX_RESTARTS) or ends it. The newest checkpoint is untouched: checkpoints are only ever
replaced atomically.
"""
from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

HANG_EXIT_STATUS = 3
UNWATCHED_PHASES = frozenset({"validate"})  # its own length scales with the validation split
# A rank in these phases may only be waiting for a peer that stalled (in a collective, or in the
# gathers and gradient all-reduce of a step): it allows that peer half the timeout more, so that the
# rank named is the one that stopped, in the phase it stopped in.
PEER_WAIT_PHASES = frozenset({"forward", "backward", "collective"})
PEER_WAIT_FACTOR = 1.5


class Heartbeat:
    """The phase a training process is in, its last finished step and when either last changed.
    Plain attribute writes: the watchdog only reads them (atomic under the GIL)."""

    def __init__(self, step: int = 0):
        self.phase = "start"
        self.step = step
        self.last_beat = time.monotonic()

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.last_beat = time.monotonic()

    def step_done(self, step: int) -> None:
        self.step = step
        self.enter("data")  # next: waiting for the next batch

    def silent_for(self) -> float:
        return 0.0 if self.phase in UNWATCHED_PHASES else time.monotonic() - self.last_beat

    def allowed_silence(self, timeout_s: float) -> float:
        return timeout_s * PEER_WAIT_FACTOR if self.phase in PEER_WAIT_PHASES else timeout_s


class Watchdog:
    """Watches a Heartbeat from a daemon thread while the ``with`` block runs."""

    def __init__(self, heartbeat: Heartbeat, rank: int, timeout_s: float):
        self.heartbeat = heartbeat
        self.rank = rank
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()

    def _watch(self) -> None:
        poll_s = min(5.0, self.timeout_s / 10)
        while not self._stop.wait(poll_s):
            if self.heartbeat.silent_for() >= self.heartbeat.allowed_silence(self.timeout_s):
                self._end()

    def _end(self) -> None:
        logger.error("rank %d hung: no progress in phase %s for %g s after step %d (--hang_timeout %g); exiting "
                     "with status %d", self.rank, self.heartbeat.phase,
                     self.heartbeat.allowed_silence(self.timeout_s), self.heartbeat.step, self.timeout_s,
                     HANG_EXIT_STATUS)
        logging.shutdown()  # flush the log file: os._exit skips it
        os._exit(HANG_EXIT_STATUS)
