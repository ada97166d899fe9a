"""The demo report's histogram quantiles (from the worker's Prometheus buckets)."""

from __future__ import annotations

from stream.observability.histograms import histogram_quantile

NAME = "journey_deadline_fire_delay_seconds"


def buckets(counts: dict[str, float]) -> dict:
    return {(f"{NAME}_bucket", (("le", le),)): v for le, v in counts.items()}


def test_quantiles_are_bucket_upper_bounds() -> None:
    samples = buckets({"0.05": 90, "0.25": 99, "2.0": 100, "+Inf": 100})
    assert histogram_quantile(samples, NAME, 0.5) == 0.05
    assert histogram_quantile(samples, NAME, 0.99) == 0.25
    assert histogram_quantile(samples, NAME, 1.0) == 2.0


def test_no_observations_no_quantile() -> None:
    assert histogram_quantile({}, NAME, 0.5) is None
    assert histogram_quantile(buckets({"0.05": 0, "+Inf": 0}), NAME, 0.5) is None
