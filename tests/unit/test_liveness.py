"""The stall rules behind /live and /ready."""

from __future__ import annotations

from stream.journey.liveness import Liveness

S = 1000


def test_waiting_records_with_an_unmoving_position_stall_after_the_limit() -> None:
    live = Liveness(stall_ms=60 * S, max_watermark_lag_ms=900 * S)
    live.observe_input("touchpoints:0", position=10, lag=5, now_ms=0)
    assert live.stalls(59 * S, {}) == []
    (stall,) = live.stalls(60 * S, {})
    assert stall.partition == "touchpoints:0" and "5 records waiting" in stall.reason
    # Moving again clears it.
    live.observe_input("touchpoints:0", position=11, lag=4, now_ms=61 * S)
    assert live.stalls(62 * S, {}) == []


def test_an_idle_partition_read_to_its_end_is_not_stalled() -> None:
    live = Liveness(stall_ms=60 * S, max_watermark_lag_ms=900 * S)
    live.observe_input("touchpoints:0", position=10, lag=0, now_ms=0)
    assert live.stalls(3600 * S, {0: 3600 * S - 600 * S}) == []


def test_a_frozen_watermark_with_no_input_lag_stalls() -> None:
    live = Liveness(stall_ms=60 * S, max_watermark_lag_ms=900 * S)
    live.observe_input("touchpoints:0", position=10, lag=0, now_ms=0)
    (stall,) = live.stalls(2000 * S, {0: 2000 * S - 901 * S, 1: 2000 * S - 600 * S})
    assert stall.partition == "journey partition 0" and "901 s behind" in stall.reason
    # While input waits, a lagging watermark is expected (a backlog), not a stall.
    live.observe_input("touchpoints:1", position=3, lag=100, now_ms=1990 * S)
    assert live.stalls(2000 * S, {0: 0}) == []


def test_reassigned_partitions_are_forgotten() -> None:
    live = Liveness(stall_ms=60 * S, max_watermark_lag_ms=900 * S)
    live.observe_input("touchpoints:0", position=10, lag=5, now_ms=0)
    live.forget_inputs_except(set())
    assert live.stalls(3600 * S, {}) == []
