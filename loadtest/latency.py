"""Fire latency of abandonment deadlines, read back from ``journey.triggers``.

Every abandonment trigger carries ``extra.watermark_passed_at`` (the wall
time its journey partition's watermark passed the deadline) and ``fired_at``
(the wall time the worker emitted it). Their difference is the fire delay the
product promises to keep under 2 s.
"""

from __future__ import annotations

from typing import Any

import orjson


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in [0, 100])."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[int(rank) - 1]


def fire_delays(triggers: list[dict[str, Any]], journey: bool = False) -> list[float]:
    """Seconds from the watermark passing each abandonment deadline to its emission.

    With ``journey``, from the journey's own watermark: the partition's, or
    later when the journey was waiting for its identity links to answer
    (``extra.identity_ready_at``), since until then it may not fire.
    """
    out = []
    for t in triggers:
        extra = t.get("extra") or {}
        passed = extra.get("watermark_passed_at")
        if t.get("kind") != "abandonment" or passed is None or not t.get("fired_at"):
            continue
        if journey:
            passed = max(passed, extra.get("identity_ready_at", passed))
        out.append(max(0, t["fired_at"] - passed) / 1000)
    return sorted(out)


def summary(triggers: list[dict[str, Any]]) -> dict[str, Any]:
    delays = fire_delays(triggers)
    if not delays:
        return {"triggers": len(triggers), "abandonments_measured": 0}
    ready = fire_delays(triggers, journey=True)
    waited = sum(1 for t in triggers if "identity_ready_at" in (t.get("extra") or {}))
    return {
        "triggers": len(triggers),
        "abandonments_measured": len(delays),
        "fire_delay_p50_s": round(percentile(delays, 50), 3),
        "fire_delay_p99_s": round(percentile(delays, 99), 3),
        "fire_delay_max_s": round(delays[-1], 3),
        "waited_for_identity_links": waited,
        "fire_delay_from_journey_ready_p50_s": round(percentile(ready, 50), 3),
        "fire_delay_from_journey_ready_p99_s": round(percentile(ready, 99), 3),
    }


def read_triggers(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every trigger on ``topic`` (decoded), read to its end."""
    from stream.topics import read_topic  # a Kafka client, only where a topic is read

    return [orjson.loads(r.value) for r in read_topic(bootstrap, topic, timeout_s)]
