"""Whether a worker is stuck: what ``/live`` and ``/ready`` tell a supervisor. Pure.

A worker is stalled when an input partition it owns has records waiting and its
position has not moved for ``stall_ms``, or when every input is read to its end
and a journey partition's watermark still lags the wall clock by more than
``max_watermark_lag_ms`` (it should follow the clock once the inputs are idle).
Either way nothing more will be settled or sent until something changes; a
supervisor restarts a worker whose ``/live`` fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class InputProgress:
    """One owned input partition: how far behind it is and when it last moved."""

    lag: int = 0
    position: int = -1
    #: Wall ms when ``position`` last changed (or the partition was assigned).
    moved_at_ms: int = 0

    def observe(self, position: int, lag: int, now_ms: int) -> None:
        if position != self.position:
            self.position = position
            self.moved_at_ms = now_ms
        self.lag = lag


@dataclass(frozen=True)
class Stall:
    """A reason the worker makes no progress, naming the partition."""

    partition: str
    reason: str

    def __str__(self) -> str:
        return f"{self.partition}: {self.reason}"


@dataclass
class Liveness:
    """The stall rules over the latest progress; fed by the shell, no clock of its own."""

    stall_ms: int
    max_watermark_lag_ms: int
    inputs: dict[str, InputProgress] = field(default_factory=dict)

    def observe_input(self, name: str, position: int, lag: int, now_ms: int) -> None:
        progress = self.inputs.get(name)
        if progress is None:
            progress = self.inputs[name] = InputProgress(moved_at_ms=now_ms)
        progress.observe(position, lag, now_ms)

    def forget_inputs_except(self, names: set[str]) -> None:
        """Drop partitions no longer assigned (their progress belongs to another worker)."""
        for name in set(self.inputs) - names:
            del self.inputs[name]

    def stalls(self, now_ms: int, watermarks: Mapping[int, int]) -> list[Stall]:
        """Why the worker is stuck now (empty: it is not).

        ``watermarks`` maps each owned journey partition to its watermark (ms);
        partitions without one yet (still waiting for every source) are left out.
        """
        out: list[Stall] = []
        for name, progress in sorted(self.inputs.items()):
            idle_ms = now_ms - progress.moved_at_ms
            if progress.lag > 0 and idle_ms >= self.stall_ms:
                out.append(
                    Stall(
                        name,
                        f"{progress.lag} records waiting, position unchanged for "
                        f"{idle_ms / 1000:.0f} s",
                    )
                )
        if all(p.lag == 0 for p in self.inputs.values()):
            for partition, watermark in sorted(watermarks.items()):
                lag_ms = now_ms - watermark
                if lag_ms > self.max_watermark_lag_ms:
                    out.append(
                        Stall(
                            f"journey partition {partition}",
                            f"watermark {lag_ms / 1000:.0f} s behind the clock with every "
                            "input read to its end",
                        )
                    )
        return out
