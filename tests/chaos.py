"""The chaos test's fault schedule: which process is hit, how and when, from a seed.

Pure (no processes, no clock): the same seed and length always give the same
schedule, so a failing run is reproduced with its ``CHAOS_SEED`` and ``CHAOS_S``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KILL_WORKER = "kill -9 worker"
PAUSE_WORKER = "SIGSTOP worker"
KILL_DISPATCHER = "kill -9 dispatcher"

#: Every schedule holds these, whatever its length: a kill with a wiped data
#: dir, repeated pauses past the session timeout, a dispatcher kill.
REQUIRED: tuple[tuple[str, bool], ...] = (
    (KILL_WORKER, True),
    (PAUSE_WORKER, False),
    (PAUSE_WORKER, False),
    (KILL_DISPATCHER, False),
)
#: What fills the rest of the fault phase, pauses twice as often as the others.
EXTRA: tuple[tuple[str, bool], ...] = (
    (KILL_WORKER, False),
    (KILL_WORKER, True),
    (PAUSE_WORKER, False),
    (PAUSE_WORKER, False),
    (KILL_DISPATCHER, False),
)


@dataclass(frozen=True)
class Fault:
    """One fault: at ``at_s`` into the fault phase, ``kind`` hits ``target``.

    ``hold_s`` is how long a paused worker stays stopped (SIGCONT after it), or
    how long a killed process stays down before it is restarted; ``wipe``
    deletes a killed worker's data dir before the restart.
    """

    at_s: float
    kind: str
    target: str
    hold_s: float
    wipe: bool = False

    def __str__(self) -> str:
        what = "stopped" if self.kind == PAUSE_WORKER else "down"
        wipe = ", data dir wiped" if self.wipe else ""
        return (
            f"{self.at_s:7.1f}s  {self.kind:<20} {self.target:<10} {what} {self.hold_s:.1f}s{wipe}"
        )


def fault_schedule(
    seed: int, length_s: float, session_timeout_s: float, workers: int = 2
) -> list[Fault]:
    """Faults one after another over about ``length_s`` seconds, derived from ``seed``.

    The :data:`REQUIRED` faults come first in a seeded order (even past
    ``length_s``); then faults drawn from :data:`EXTRA` while they end within
    ``length_s``. Pauses last 1.5 to 2.5 session timeouts, so the paused
    worker's partitions go to the other one before it wakes; a killed process
    is down 0.5 to 4 s; 4 to 12 s pass between the end of a fault and the next.
    """
    rng = random.Random(seed)
    required = list(REQUIRED)
    rng.shuffle(required)
    faults: list[Fault] = []
    t = rng.uniform(2.0, 6.0)
    while True:
        kind, wipe = required.pop(0) if required else rng.choice(EXTRA)
        if kind == PAUSE_WORKER:
            hold = rng.uniform(1.5, 2.5) * session_timeout_s
        else:
            hold = rng.uniform(0.5, 4.0)
        target = "dispatcher" if kind == KILL_DISPATCHER else f"worker-{rng.randrange(workers) + 1}"
        if len(faults) >= len(REQUIRED) and t + hold > length_s:
            return faults
        faults.append(Fault(round(t, 1), kind, target, round(hold, 1), wipe))
        t += hold + rng.uniform(4.0, 12.0)


def describe(seed: int, length_s: float, faults: list[Fault]) -> str:
    """The schedule as printed at the start of a run, with how to run it again."""
    lines = [
        f"chaos seed {seed}, fault phase {length_s:g}s "
        f"(reproduce: make chaos SEED={seed} CHAOS_S={length_s:g})",
        *(f"  {fault}" for fault in faults),
    ]
    return "\n".join(lines)
