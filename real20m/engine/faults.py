"""Faults on purpose, for the reliability tests of elastic restarts and the hang watchdog.

``REAL20M_FAULT=ACTION:RANK:STEP`` (e.g. ``kill:1:3``) makes rank RANK die (``kill``) or stop
making progress (``stall``) once it has trained optimizer step STEP, on the first attempt of a run
only (torchrun's TORCHELASTIC_RESTART_COUNT is 0 or unset), so that the restarted job runs
through. The variable is read here and nowhere else.
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from real20m.engine.distributed import restart_count

FAULT_VARIABLE = "REAL20M_FAULT"


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no message: as the OOM killer or a node loss does


def _stall() -> None:
    threading.Event().wait()  # blocks for ever, as a dead file system or a lost peer does


ACTIONS: dict[str, Callable[[], None]] = {"kill": _kill, "stall": _stall}


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    step: int

    def after_step(self, rank: int, step: int) -> None:
        if rank == self.rank and step == self.step:
            ACTIONS[self.action]()


def planned_fault() -> Fault | None:
    """The fault ``REAL20M_FAULT`` asks for on this attempt, or None."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec or restart_count() > 0:
        return None
    action, rank, step = spec.split(":")
    if action not in ACTIONS:
        raise ValueError(f"{FAULT_VARIABLE}={spec}: unknown action {action!r}; choose one of {sorted(ACTIONS)}")
    return Fault(action, int(rank), int(step))
