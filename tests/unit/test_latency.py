"""The bench's fire-latency figures."""

from __future__ import annotations

import pytest

from loadtest.latency import fire_delays, percentile, summary


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_fire_delays_only_count_measured_abandonments() -> None:
    triggers = [
        {"kind": "abandonment", "fired_at": 2_500, "extra": {"watermark_passed_at": 1_000}},
        {"kind": "abandonment", "fired_at": 1_200, "extra": {"watermark_passed_at": 1_000}},
        {"kind": "abandonment", "fired_at": 1_200, "extra": {}},
        {"kind": "transition", "fired_at": 9_000, "extra": {"watermark_passed_at": 1}},
    ]
    assert fire_delays(triggers) == [0.2, 1.5]
    s = summary(triggers)
    assert (s["abandonments_measured"], s["fire_delay_p50_s"], s["fire_delay_p99_s"]) == (
        2,
        0.2,
        1.5,
    )


def test_journey_ready_delay_starts_when_identity_links_answered() -> None:
    triggers = [
        {
            "kind": "abandonment",
            "fired_at": 9_100,
            "extra": {"watermark_passed_at": 1_000, "identity_ready_at": 9_000},
        },
        {"kind": "abandonment", "fired_at": 1_300, "extra": {"watermark_passed_at": 1_000}},
    ]
    assert fire_delays(triggers) == [0.3, 8.1]
    assert fire_delays(triggers, journey=True) == [0.1, 0.3]
    s = summary(triggers)
    assert s["waited_for_identity_links"] == 1
    assert s["fire_delay_from_journey_ready_p99_s"] == 0.3
