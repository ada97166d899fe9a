"""``journey report``: the journey map of an event log, offline.

The log goes through the oracle (:mod:`stream.journey.replay`: identity
resolution and the journey rules, with the model keeping stage visits), its
visits into one :class:`Aggregate`, and that into :func:`report`: the same
code the stream runs per partition and merges, so the stream's map of a log
equals this one.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Iterable

import orjson

from stream import contract
from stream.analytics.aggregate import Aggregate
from stream.analytics.attribution import policy_of
from stream.analytics.attribution_log import attribute, counts_of
from stream.analytics.config import check, map_model
from stream.analytics.decisions import OutcomeFact, outcome_line
from stream.analytics.followups import followups
from stream.analytics.report import report
from stream.contract import Rejected, Touchpoint
from stream.journey.replay import read_log, run_oracle
from stream.journey.stages import StageModel
from stream.journey.visits import VisitEffect
from stream.settings import AnalyticsSettings, Settings


def aggregate(visits: Iterable[VisitEffect], analytics: AnalyticsSettings) -> Aggregate:
    """One aggregate of every visit effect (what a single partition would hold)."""
    agg = Aggregate.for_settings(analytics)
    agg.add_all(visits)
    return agg


def as_of(events: list[Touchpoint], model: StageModel, lateness_ms: int) -> int:
    """The default event time a log is settled to.

    What a caught-up, idle stream would have settled by now (as ``journey
    replay``), or, if earlier, one visit window after the log's last event: then
    every visit begun in an old log has ended, and the map shows the log, not
    months of lapsing after it.
    """
    now = int(time.time() * 1000) - lateness_ms
    if not events or model.visits is None:
        return now
    return min(now, max(tp.timestamp for tp in events) + model.visits.window_ms)


def _time(text: str | None) -> int | None:
    if text is None:
        return None
    return contract.parse_timestamp(int(text) if text.isdigit() else text)


def main(args: argparse.Namespace, settings: Settings) -> int:
    analytics = check(settings.analytics)
    model = map_model(settings, args.stage_model)
    lateness_ms = int(settings.journey.allowed_lateness_s * 1000)
    try:
        since, until, horizon = _time(args.since), _time(args.until), _time(args.as_of)
    except contract.InvalidTouchpoint as exc:
        raise SystemExit(f"journey report: {exc.reason}") from None
    source = sys.stdin.buffer if str(args.file) == "-" else open(args.file, "rb")  # noqa: SIM115
    rejected = 0
    valid: list[Touchpoint] = []
    outcomes: list[OutcomeFact] = []
    touchpoint_lines = io.BytesIO()
    with source:
        for line in source:
            outcome = outcome_line(line)
            if outcome is None:
                touchpoint_lines.write(line if line.endswith(b"\n") else line + b"\n")
            else:
                outcomes.append(outcome)
        touchpoint_lines.seek(0)
        for item in read_log(touchpoint_lines):
            if isinstance(item, Rejected):
                rejected += 1
                print(f"rejected: {item.reason}", file=sys.stderr)
            else:
                valid.append(item)
    if horizon is None:
        horizon = as_of(valid, model, lateness_ms)
    oracle = run_oracle(valid, model, lateness_ms, horizon)
    try:
        body = report(
            aggregate(oracle.visits, analytics),
            model,
            since=since,
            until=until,
            segment=args.segment,
            now=horizon,
            settings=analytics,
        )
        if outcomes:
            a = settings.attribution
            records = attribute(oracle, valid, outcomes, horizon, policy_of(settings))
            counts = counts_of(records, a.bucket_s * 1000)
            body["followups"] = followups(counts, since, until, a.min_per_arm)
    except ValueError as exc:
        raise SystemExit(f"journey report: {exc}") from None
    out = sys.stdout.buffer
    out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    out.flush()
    print(
        f"reported {len(valid)} events ({rejected} rejected, {oracle.duplicates} duplicates): "
        f"{body['customers']} customers, {len(oracle.visits)} visit records, "
        f"{len(body['alerts'])} alerts, {len(outcomes)} dispatch outcomes",
        file=sys.stderr,
    )
    return 0
