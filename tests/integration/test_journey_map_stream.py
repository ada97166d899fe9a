"""The journey map from the stream equals ``journey report`` on the same log.

A ``journey simulate --map`` log (planted moment of truth, pain point and a
checkout incident) goes through two workers sharing the partitions. Then
``GET /journey-map`` from either worker must equal ``journey report`` on the
same log, every count, for the same since/until and for a segment cut. The
map's alerts open and close once each on ``journey.alerts``. The
same numbers must survive every ``journey.visits`` record delivered a second
time, and a garbage record on that topic is dead-lettered with its reason
while the map goes on. The live ``/map`` of a real worker, in headless
Chromium, shows the numbers of ``/journey-map`` with no console errors. And a
worker killed (SIGKILL) mid-stream and started again on its store ends with
the same map: no visit lost or counted twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from stream import contract, simulator
from stream.settings import Settings, to_environ
from stream.simulator import MAP_PERSONAS, Incident
from stream.topics import ensure_topics
from tests.browser import chromium
from tests.helpers import REPO, read_topic, wait_for
from tests.integration.test_journey_map_page import Problems, sankey_series
from tests.procs import Worker, http_get

DAY_MS = 86_400_000
#: Longer than the log's span: nothing settles while the backlog is read (the
#: oracle sorts the log; the stream must not see any of it as late), and the log
#: ends longer ago than this plus the visit window, so every visit has ended
#: once the workers are caught up and idle.
LATENESS_S = 30 * 86_400.0
SPAN_DAYS = 20
CUSTOMERS = 1500
READ_TOKEN = "map-read-token-0123456789"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture
def map_settings(settings: Settings) -> Settings:
    s = replace(
        settings,
        journey=replace(settings.journey, allowed_lateness_s=LATENESS_S),
        # Alerts on smaller samples than the defaults: this log's incident opens some.
        analytics=replace(settings.analytics, alert_min_count=10, alert_level=0.01),
        worker=replace(
            settings.worker, api_tokens={**settings.worker.api_tokens, READ_TOKEN: "read"}
        ),
    )
    ensure_topics(s)
    return s


def with_data_dir(settings: Settings, path: Path) -> Settings:
    return replace(settings, worker=replace(settings.worker, data_dir=str(path)))


def journey_report(settings: Settings, log: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "report", str(log), *args],
        cwd=REPO,
        env={**to_environ(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=300,
        check=True,
    )
    return dict(orjson.loads(done.stdout))


def stream_map(worker: Worker, query: str) -> tuple[int, Any]:
    return http_get(f"{worker.url}/journey-map?{query}", timeout=60, token=READ_TOKEN)


def differences(got: tuple[int, Any], want: dict[str, Any]) -> Any:
    """What differs between a ``/journey-map`` answer and the report (for the failure message)."""
    status, body = got
    if status != 200 or not isinstance(body, dict):
        return (status, body)
    return {
        key: (body.get(key), want[key]) if key in ("customers", "stages") else "differs"
        for key in want
        if body.get(key) != want[key]
    }


def start_workers(s: Settings, tmp_path: Path, workers: list[Worker]) -> None:
    """Start two workers into ``workers`` (so the caller stops whichever started)."""
    for i in (1, 2):
        w = Worker(with_data_dir(s, tmp_path / f"w{i}-data"), tmp_path / f"worker-{i}.log")
        workers.append(w)
        w.start()
    for w in workers:
        w.wait_ready()


def planted_log(
    s: Settings, tmp_path: Path, customers: int, seed: int
) -> tuple[list[dict[str, Any]], Path, list[str], str]:
    """A --map log (written to a file) and a since/until window both sides have settled."""
    start = int(time.time() * 1000) - 70 * DAY_MS
    events = simulator.generate(
        customers,
        seed=seed,
        start_ms=start,
        span_s=SPAN_DAYS * 86_400,
        personas=MAP_PERSONAS,
        incident=Incident(day=14, days=2, platform="ios"),
    )
    log = tmp_path / "map.jsonl"
    simulator.write_jsonl(log, events)
    last = max(contract.parse(e).timestamp for e in events)
    # Up to the last event plus the visit window: every visit has ended on both sides.
    since = contract.format_timestamp(start)
    until = contract.format_timestamp((last // DAY_MS + 7) * DAY_MS)
    return events, log, ["--since", since, "--until", until], f"since={since}&until={until}"


def test_stream_map_equals_journey_report_and_the_live_page_shows_it(
    map_settings: Settings, tmp_path: Path
) -> None:
    s = map_settings
    events, log, window, query = planted_log(s, tmp_path, CUSTOMERS, seed=5)
    want = journey_report(s, log, *window)
    want_ios = journey_report(s, log, *window, "--segment", "context.platform:ios")
    assert want["customers"] > 0 and want["touchpoints"]

    # A garbage record on journey.visits: dead-lettered with the reason, the map goes on.
    producer = KafkaProducer(bootstrap_servers=s.broker.bootstrap)
    producer.send(s.topics.visits, b'{"journey": "c-1", "visits": [{"kind": "x"}]}', key=b"c-1")
    producer.flush()
    # The log is on the broker before the workers start, as in the oracle test:
    # a worker idle between chunks would move its watermark to the wall clock,
    # and the rest of a weeks-old log would come late.
    simulator.produce(s, events, rate=None, pack_sessions=True)
    workers: list[Worker] = []
    try:
        start_workers(s, tmp_path, workers)
        check_map(s, workers, producer, want, want_ios, query)
    finally:
        producer.close()
        for w in workers:
            w.stop()


def check_map(
    s: Settings,
    workers: list[Worker],
    producer: KafkaProducer,
    want: dict[str, Any],
    want_ios: dict[str, Any],
    query: str,
) -> None:
    first, second = workers
    wait_for(
        lambda: differences(stream_map(first, query), want),
        lambda diff: diff == {},
        timeout_s=600,
        every_s=3.0,
    )
    assert stream_map(second, query) == (200, want)
    assert stream_map(second, f"{query}&segment=context.platform:ios") == (200, want_ios)

    # Each alert of the map opened, and closed, once on journey.alerts.
    _, full = stream_map(first, "")
    assert full["alerts"], "the planted incident opens alerts"
    want_alerts = {
        (event, a["kind"], a["stage"], a["touchpoint"], a["opened_at"])
        for a in full["alerts"]
        for event in ("opened", "closed")
        if event == "opened" or a["closed_at"] is not None
    }

    def published() -> list[tuple[Any, ...]]:
        bodies = [orjson.loads(r.value) for r in read_topic(s.broker.bootstrap, s.topics.alerts)]
        return [
            (b["event"], b["kind"], b["stage"], b["touchpoint"], b["opened_at"]) for b in bodies
        ]

    alerts = wait_for(published, lambda got: set(got) == want_alerts, timeout_s=90, every_s=1.0)
    assert len(alerts) == len(want_alerts)

    dead = [
        r
        for r in read_topic(s.broker.bootstrap, s.topics.dlq, timeout_s=30)
        if dict(r.headers).get("stage") == b"analytics"
    ]
    assert len(dead) == 1
    assert b"visits[0].kind" in dict(dead[0].headers)["reason"]

    # Every visit record delivered again (a journey step published twice): counted once.
    records = read_topic(s.broker.bootstrap, s.topics.visits, timeout_s=60)
    assert len(records) > CUSTOMERS
    for r in records:
        producer.send(s.topics.visits, r.value, key=r.key, partition=r.partition)
    producer.flush()
    wait_for(
        lambda: sum(w.metric("journey_map_records_total", outcome="duplicate") for w in workers),
        lambda n: n >= len(records) - 1,
        timeout_s=240,
        every_s=2.0,
    )
    assert stream_map(first, query) == (200, want)

    # Bad queries are refused with the reason.
    status, body = stream_map(first, "since=yesterday")
    assert status == 400 and "since" in body["error"]
    status, body = stream_map(first, "segment=context.country:fr")
    assert status == 400 and "context.platform" in body["error"]

    # The live page of a real worker shows the numbers of /journey-map.
    _, full = stream_map(first, "")
    with chromium() as browser:
        page = browser.new_page()
        problems = Problems(page)
        page.goto(f"{second.url}/map?token={READ_TOKEN}")
        page.wait_for_selector("main[data-renders='1']", timeout=30_000)
        for stage in full["stages"]:
            shown = page.inner_text(f"section[data-stage={stage['stage']}] [data-field=visits]")
            assert shown.replace(",", "").startswith(str(stage["visits"])), (stage, shown)
        assert page.locator("li.jm-alert").count() == sum(
            1 for a in full["alerts"] if a["closed_at"] is None
        )
        # The Sankey is drawn by the ECharts script the worker serves.
        drawn = {
            (ln["flow"]["from"], ln["flow"]["to"]): ln["value"]
            for ln in sankey_series(page)["links"]
        }
        flows = {(f["from"], f["to"]): f["count"] for f in full["flows"]}
        assert drawn and all(flows[move] == n for move, n in drawn.items()), (drawn, flows)
        assert problems.seen == []


def test_a_worker_killed_mid_stream_neither_loses_nor_doubles_a_visit(
    map_settings: Settings, tmp_path: Path
) -> None:
    s = map_settings
    events, log, window, query = planted_log(s, tmp_path, 2 * CUSTOMERS, seed=8)
    want = journey_report(s, log, *window)
    simulator.produce(s, events, rate=None, pack_sessions=True)
    data = tmp_path / "worker-data"
    workers = [Worker(with_data_dir(s, data), tmp_path / "worker-a.log")]
    try:
        workers[0].start().wait_ready()
        wait_for(
            lambda: workers[0].metric("journey_map_records_total", outcome="counted"),
            lambda n: n >= 20,
            timeout_s=180,
            every_s=0.1,
        )
        workers[0].kill()
        # Its successor opens the same store and reads again what was not committed.
        workers.append(Worker(with_data_dir(s, data), tmp_path / "worker-b.log"))
        workers[1].start().wait_ready()
        wait_for(
            lambda: differences(stream_map(workers[1], query), want),
            lambda diff: diff == {},
            timeout_s=600,
            every_s=3.0,
        )
    finally:
        for w in workers:
            w.stop()
