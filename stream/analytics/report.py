"""The journey map report: stages, flows, touchpoint impact, segments and alerts.

:func:`report` reads an :class:`Aggregate` (one pass over a log, or the stream's
per-partition aggregates merged) and returns plain JSON-ready data with every
list sorted, so two reports of the same visits are equal. Times in the report
are RFC 3339 (UTC); durations are seconds.

What a window counts (``since``/``until`` are rounded out to whole buckets):

- ``advanced``, ``dropped``, flows, touchpoints, time to advance: visits that
  *ended* in the window;
- ``open``: visits that *began* in the window and had not ended by its end;
- ``customers``: journeys that began (entered their first stage) in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from stream.analytics import alerts as alerting
from stream.analytics.aggregate import OTHER, Aggregate, StageCounts
from stream.analytics.impact import impact
from stream.analytics.sketch import DurationSketch
from stream.contract import format_timestamp
from stream.journey.stages import StageModel
from stream.settings import AnalyticsSettings

#: Channels a touchpoint counts as online in; the others (pos, support) are offline.
ONLINE_CHANNELS = frozenset({"web", "app", "email"})
DROPPED = "dropped"
STAGE_ADVANCE_DROP = "stage_advance_drop"
TOUCHPOINT_SPIKE = "touchpoint_spike"


def _num(value: float | None) -> float | None:
    """Six significant digits: enough to read, and equal floats compare equal."""
    return None if value is None else float(f"{value:.6g}")


def _rate(part: int, whole: int) -> float | None:
    return _num(part / whole) if whole else None


def parse_segment(text: str) -> tuple[str, str]:
    """``DIM:VALUE`` -> (dimension, value)."""
    dim, sep, value = text.partition(":")
    if not sep or not dim or not value:
        raise ValueError(f"segment {text!r}: use DIMENSION:VALUE, e.g. context.platform:ios")
    return dim, value


def report(
    aggregate: Aggregate,
    model: StageModel,
    since: int | None = None,
    until: int | None = None,
    segment: str | None = None,
    now: int | None = None,
    settings: AnalyticsSettings | None = None,
) -> dict[str, Any]:
    """The journey map of the visits in ``aggregate``.

    ``since``/``until`` (epoch ms) bound the window (default: all the data
    kept); ``segment`` (``DIM:VALUE``) cuts it to one segment value (``other``:
    every value not named); ``now`` is the event time the report is as of (the
    watermark): alerts are evaluated only at bucket boundaries at or before it
    (default: every bucket is complete). ``settings`` give the report's
    thresholds (the ``[analytics]`` defaults if None).
    """
    a = settings or AnalyticsSettings()
    bucket_ms = aggregate.bucket_s * 1000
    selected = None
    if segment is not None:
        dim, selected = parse_segment(segment)
        if dim != aggregate.segment:
            raise ValueError(
                f"segment {segment!r}: this map is cut by {aggregate.segment or 'nothing'!r}"
            )
    data = sorted(aggregate.buckets)
    if data:
        first = data[0] if since is None else max(data[0], since // bucket_ms)
        end = data[-1] + 1 if until is None else min(data[-1] + 1, -(-until // bucket_ms))
    else:
        first = end = (since or 0) // bucket_ms
    end = max(first, end)
    window = range(first, end)

    named = _top_values(aggregate, window, a.max_segment_values)
    if selected is None:
        included = None
    elif selected == OTHER:
        included = {v for b in aggregate.buckets.values() for v in b if v not in named}
    else:
        included = {selected}

    stages = model.all_stages
    totals: dict[str, StageCounts] = {s: StageCounts() for s in stages}
    open_begun: dict[str, int] = defaultdict(int)
    dropped_touchpoints = 0
    # Same-bucket series for alerts: visits begun, of which advanced / saw a touchpoint.
    began_by: dict[str, dict[int, int]] = defaultdict(dict)
    advanced_by: dict[str, dict[int, int]] = defaultdict(dict)
    touched_by: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    timeline: list[dict[str, Any]] = []
    for b in data:
        in_window = first <= b < end
        per_stage: dict[str, StageCounts] = {}
        for value, counts_by_stage in aggregate.buckets[b].items():
            if included is not None and value not in included:
                continue
            for stage, counts in counts_by_stage.items():
                if stage not in totals:
                    continue  # a stage of another model: not on this map
                per_stage.setdefault(stage, StageCounts()).merge(counts)
        for stage, counts in per_stage.items():
            closed = counts.advanced + counts.dropped
            began_by[stage][b] = counts.opened
            advanced_by[stage][b] = counts.advanced_same
            for name, n in counts.touched_same.items():
                touched_by[stage, name][b] = n
            if not in_window:
                continue
            totals[stage].merge(counts)
            open_begun[stage] += counts.opened - sum(
                n for entry, n in counts.closed_from.items() if first <= entry < end
            )
            dropped_touchpoints += counts.touchpoints_dropped
            timeline.append(
                {
                    "bucket": format_timestamp(b * bucket_ms),
                    "stage": stage,
                    "began": counts.opened,
                    "advanced": counts.advanced,
                    "dropped": counts.dropped,
                    "advance_rate": _rate(counts.advanced, closed),
                }
            )

    rank = {s: i for i, s in enumerate(stages)}
    timeline.sort(key=lambda r: (r["bucket"], rank[r["stage"]]))
    terminal = model.terminal_stage

    stage_rows = []
    for stage in stages:
        t = totals[stage]
        closed = t.advanced + t.dropped
        sketch: DurationSketch = t.time_to_advance
        median, p90 = sketch.quantile(0.5), sketch.quantile(0.9)
        stage_rows.append(
            {
                "stage": stage,
                "visits": closed + open_begun[stage],
                "advanced": t.advanced,
                "dropped": t.dropped,
                "open": open_begun[stage],
                "advance_rate": None if stage == terminal else _rate(t.advanced, closed),
                "median_time_to_advance_s": None if median is None else _num(median / 1000),
                "p90_time_to_advance_s": None if p90 is None else _num(p90 / 1000),
                "terminal": stage == terminal,
            }
        )

    def flow_rank(row: dict[str, Any]) -> tuple[int, int, str]:
        to = row["to"]
        return (rank[row["from"]], len(stages) if to == DROPPED else rank.get(to, -1), to)

    flows: list[dict[str, Any]] = []
    for stage in stages:
        t = totals[stage]
        for to, n in t.advanced_to.items():
            flows.append({"from": stage, "to": to, "count": n})
        if t.dropped:
            flows.append({"from": stage, "to": DROPPED, "count": t.dropped})
    flows.sort(key=flow_rank)

    touchpoint_rows: list[dict[str, Any]] = []
    for stage in stages:
        if stage == terminal:
            continue  # nothing advances from it: no lift to measure
        t = totals[stage]
        closed = t.advanced + t.dropped
        for (name, channel), (w, aw) in t.touchpoints.items():
            i = impact(w, aw, closed - w, t.advanced - aw, a.min_visits)
            touchpoint_rows.append(
                {
                    "stage": stage,
                    "touchpoint": name,
                    "channel": channel or None,
                    "online": None if not channel else channel in ONLINE_CHANNELS,
                    "visits_with": i.visits_with,
                    "advanced_with": i.advanced_with,
                    "visits_without": i.visits_without,
                    "advanced_without": i.advanced_without,
                    "share": _rate(w, closed),
                    "rate_with": _rate(aw, w),
                    "rate_without": _rate(t.advanced - aw, closed - w),
                    "lift": _num(i.lift),
                    "ci_low": _num(i.ci_low),
                    "ci_high": _num(i.ci_high),
                    "verdict": i.verdict,
                }
            )
    touchpoint_rows.sort(
        key=lambda r: (rank[r["stage"]], r["touchpoint"], r["channel"] is not None, r["channel"])
    )

    boundaries = [e for e in range(first + 1, end + 1) if now is None or e * bucket_ms <= now]
    window_b = a.alert_window_s // aggregate.bucket_s
    baseline_b = a.baseline_s // aggregate.bucket_s
    alert_rows: list[dict[str, Any]] = []

    def add_alerts(kind: str, stage: str, touchpoint: str | None, episodes: Iterable[Any]) -> None:
        for ep in episodes:
            alert_rows.append(
                {
                    "kind": kind,
                    "stage": stage,
                    "touchpoint": touchpoint,
                    "segment": segment,
                    "opened_at": format_timestamp(ep.opened * bucket_ms),
                    "closed_at": None
                    if ep.closed is None
                    else format_timestamp(ep.closed * bucket_ms),
                    "rate": _num(ep.rate),
                    "baseline_rate": _num(ep.baseline_rate),
                    "p_value": _num(ep.p_value),
                }
            )

    def scan(hits: dict[int, int], totals: dict[int, int], direction: str) -> Any:
        return alerting.scan(
            hits,
            totals,
            boundaries,
            window=window_b,
            baseline=baseline_b,
            level=a.alert_level,
            min_count=a.alert_min_count,
            direction=direction,
        )

    for stage in stages:
        if stage != terminal and began_by[stage]:
            add_alerts(
                STAGE_ADVANCE_DROP,
                stage,
                None,
                scan(advanced_by[stage], began_by[stage], alerting.LOWER),
            )
    for (stage, name), hits in touched_by.items():
        add_alerts(TOUCHPOINT_SPIKE, stage, name, scan(hits, began_by[stage], alerting.HIGHER))
    alert_rows.sort(
        key=lambda r: (r["opened_at"], r["kind"], rank[r["stage"]], r["touchpoint"] or "")
    )

    customers = sum(totals[s].started for s in stages)
    return {
        "model": {
            "name": model.name,
            "stages": list(model.stages),
            "lapse_stage": model.lapse_stage,
            "visit_window_s": None if model.visits is None else model.visits.window_ms / 1000,
        },
        "window": {
            "since": format_timestamp(first * bucket_ms),
            "until": format_timestamp(end * bucket_ms),
            "bucket_s": aggregate.bucket_s,
        },
        "segments": {
            "dimension": aggregate.segment or None,
            "selected": selected,
            "values": _segment_rows(aggregate, window, named),
        },
        "customers": customers,
        "stages": stage_rows,
        "flows": flows,
        "touchpoints": touchpoint_rows,
        "touchpoints_dropped": dropped_touchpoints,
        "alerts": alert_rows,
        "timeline": timeline,
    }


def _visits_by_value(aggregate: Aggregate, window: range) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for b in window:
        for value, stages in aggregate.buckets.get(b, {}).items():
            out[value] += sum(c.opened for c in stages.values())
    return out


def _top_values(aggregate: Aggregate, window: range, n: int) -> set[str]:
    """The ``n`` segment values most visited in the window (ties by value)."""
    counts = _visits_by_value(aggregate, window)
    ranked = sorted((v for v in counts if v != OTHER), key=lambda v: (-counts[v], v))
    return set(ranked[:n])


def _segment_rows(aggregate: Aggregate, window: range, named: set[str]) -> list[dict[str, Any]]:
    counts = _visits_by_value(aggregate, window)
    rows: list[dict[str, Any]] = [{"value": v, "visits": counts[v]} for v in named]
    rest = sum(n for v, n in counts.items() if v not in named)
    rows.sort(key=lambda r: (-r["visits"], r["value"]))
    if rest:
        rows.append({"value": OTHER, "visits": rest})
    return rows
