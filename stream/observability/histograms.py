"""Reading Prometheus histograms scraped from ``/metrics`` (pure)."""

from __future__ import annotations


def histogram_quantile(samples: dict, name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram."""
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == f"{name}_bucket" and "le" in dict(ls)
    )
    total_count = buckets[-1][1] if buckets else 0
    if not total_count:
        return None
    for le, count in buckets:
        if count >= q * total_count:
            return le
    return None
