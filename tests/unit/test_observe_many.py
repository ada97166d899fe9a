"""``metrics.observe_many`` records what ``observe`` per value would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from stream.observability.metrics import observe_many

BUCKETS = (0.5, 1.0, 5.0, 60.0, 3600.0)


def samples(histogram_values: list[float], bulk: bool) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "lag", buckets=BUCKETS, registry=registry)
    if bulk:
        observe_many(histogram, histogram_values)
    else:
        for value in histogram_values:
            histogram.observe(value)
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_bounds_are_inclusive_as_in_observe() -> None:
    values = [0.0, 0.5, 0.50001, 1.0, 5.0, 60.0, 3600.0, 3600.5, 86400.0]
    got = samples(values, bulk=True)
    assert got == samples(values, bulk=False)
    assert got["lag_seconds_bucket", "0.5"] == 2
    assert got["lag_seconds_bucket", "+Inf"] == len(values)
    assert got["lag_seconds_count", ""] == len(values)


@given(st.lists(st.floats(min_value=-10.0, max_value=1e7, allow_nan=False), max_size=200))
def test_the_same_buckets_count_and_sum_as_one_observe_per_value(values: list[float]) -> None:
    bulk, single = samples(values, bulk=True), samples(values, bulk=False)
    assert bulk.keys() == single.keys()
    for key, value in single.items():
        assert abs(bulk[key] - value) <= 1e-6 * max(1.0, abs(value)), key
