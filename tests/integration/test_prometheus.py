"""Every dashboard query against a real Prometheus scraping the real services.

Two workers, the collector, the POS producer and the dispatcher (``journey
dispatcher``, with real Redis and an SMTP catcher) run as child processes with
real traffic: simulated shoppers on the touchpoints topic, the same shoppers'
web calls through the collector (so duplicates), their in-store sales through
a POS export (one malformed row), a bad call and a bad message (dead letters),
a late event, and a mail relay that is down at first (dispatcher errors, then
follow-ups sent). A real Prometheus server (Debian's ``prometheus``) scrapes
them every second. Then every PromQL expression of every panel of every
shipped dashboard is evaluated through ``/api/v1/query``: each must parse and
return data.
"""

from __future__ import annotations

import base64
import http.client
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream import simulator
from stream.embedded import SmtpCatcher, free_port
from stream.journey.model import journey_model
from stream.producers.publisher import Publisher
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.dashboards import PanelQuery, panel_queries, promql, scrape_jobs
from tests.helpers import wait_for
from tests.procs import (
    Dispatcher,
    PrometheusServer,
    Service,
    Worker,
    dispatch_settings,
    http_get,
)

DAY_MS = 86_400_000
#: Wide enough for every rate()/increase() of a panel to cover the whole run.
WINDOW = "10m"
WRITE_KEY = "demo-write-key"

pytestmark = pytest.mark.slow


@pytest.fixture
def obs_settings(settings: Settings) -> Settings:
    # Short lateness: the simulated days-old events settle (and abandonment
    # deadlines pass) as soon as the workers are caught up.
    s = replace(settings, journey=replace(settings.journey, allowed_lateness_s=60.0))
    ensure_topics(s)
    return s


def post(port: int, path: str, body: Any) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    try:
        conn.request(
            "POST",
            path,
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def value_of(prom: PrometheusServer, expr: str) -> float:
    """The single value of an instant query (NaN when it has no result)."""
    answer = prom.query(expr)
    result = answer.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else math.nan


def check(prom: PrometheusServer, query: PanelQuery) -> str | None:
    """None if the panel's expression parses and returns data; else what went wrong."""
    answer = prom.query(promql(query.expr, WINDOW))
    if answer.get("status") != "success":
        return f"{query}: {answer.get('errorType')}: {answer.get('error')}"
    data = answer["data"]
    values = (
        [data["result"][1]]
        if data["resultType"] == "scalar"
        else [s["value"][1] for s in data["result"]]
    )
    if not any(math.isfinite(float(v)) for v in values):
        return f"{query}: no data ({len(values)} series, values {values[:4]})"
    return None


def test_every_dashboard_query_returns_data_from_real_prometheus(
    obs_settings: Settings, redis_server: Any, tmp_path: Path
) -> None:
    s = obs_settings
    model = journey_model(s)
    start = int(time.time() * 1000) - 10 * DAY_MS
    events = simulator.generate(400, seed=31, start_ms=start, span_s=6 * 3600)
    web = [e for e in events if e["channel"] == "web"][:300]
    sales = [e for e in events if e["type"] == "pos_purchase"]
    assert web and sales

    # The POS export: the simulated in-store sales plus one malformed row.
    export = tmp_path / "pos" / "sales.jsonl"
    export.parent.mkdir(parents=True)
    rows = [orjson.dumps(simulator.to_pos_row(e)) for e in sales] + [b'{"store_id": "x"}']
    export.write_bytes(b"\n".join(rows) + b"\n")

    collector_port, pos_port = free_port(), free_port()
    pos_settings = replace(s, pos=replace(s.pos, metrics_port=pos_port))
    workers = [
        Worker(
            replace(s, worker=replace(s.worker, data_dir=str(tmp_path / f"w{i}"))),
            tmp_path / f"worker-{i}.log",
        )
        for i in (1, 2)
    ]
    collector = Service(["collector", "--port", str(collector_port)], s, tmp_path / "c.log", {})
    pos = Service(["pos", str(export), "--follow"], pos_settings, tmp_path / "pos.log", {})
    services: list[Service] = [*workers, collector, pos]
    smtp = SmtpCatcher(tmp_path / "mail")
    dispatcher = Dispatcher(
        # Retries that outlast the mail relay's outage below.
        dispatch_settings(s, redis_server.url, smtp.port, max_attempts=8, retry_backoff_s=0.5),
        tmp_path / "dispatcher.log",
    )
    services.append(dispatcher)

    prom = PrometheusServer(
        tmp_path / "prometheus",
        [
            {"job_name": "worker", "static_configs": [{"targets": [w.url[7:] for w in workers]}]},
            {
                "job_name": "collector",
                "static_configs": [{"targets": [f"127.0.0.1:{collector_port}"]}],
            },
            {"job_name": "pos", "static_configs": [{"targets": [f"127.0.0.1:{pos_port}"]}]},
            {"job_name": "dispatcher", "static_configs": [{"targets": [dispatcher.url[7:]]}]},
        ],
    )
    prom.config["scrape_configs"].append(
        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom.port}"]}]}
    )
    # The test scrapes the same jobs the production config names.
    assert {c["job_name"] for c in prom.config["scrape_configs"]} == set(scrape_jobs())
    try:
        prom.start()
        for service in services:
            service.start()
        for worker in workers:
            worker.wait_ready()
        dispatcher.wait_ready()
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{collector_port}/health")[0],
            lambda status: status == 200,
            timeout_s=30,
        )

        simulator.produce(s, events, rate=None, pack_sessions=True)
        # The same web events again, as the SDKs would send them: all duplicates.
        for i in range(0, len(web), 100):
            batch = [simulator.to_segment(e) for e in web[i : i + 100]]
            assert post(collector_port, "/v1/batch", {"batch": batch}) == 200
        assert post(collector_port, "/v1/track", {"event": "Product Added"}) == 400
        publisher = Publisher(s.broker)
        try:
            publisher.send_and_wait([(s.topics.touchpoints, b"bad", b"{not json")])
        finally:
            publisher.close()

        # Settled: abandonment deadlines passed and follow-ups fired.
        wait_for(
            lambda: value_of(prom, "sum(journey_abandonments_total)"),
            lambda n: n > 0,
            timeout_s=120,
            every_s=1.0,
        )
        # The mail relay is down at first (nothing listens on its port): the
        # dispatcher counts errors and retries; then the relay comes up.
        wait_for(
            lambda: value_of(prom, 'sum(journey_dispatch_errors_total{job="dispatcher"})'),
            lambda n: n > 0,
            timeout_s=60,
        )
        smtp.start()
        wait_for(
            lambda: value_of(
                prom, 'sum(journey_dispatch_outcomes_total{job="dispatcher",outcome="sent"})'
            ),
            lambda n: n > 0,
            timeout_s=60,
        )
        # A late event: older than where its customer's journey is settled.
        late_customer = next(e for e in events if e.get("customer_id"))
        late = {
            **simulator.to_segment(late_customer),
            "messageId": f"late-{late_customer['event_id']}",
        }
        assert post(collector_port, "/v1/batch", {"batch": [late]}) == 200

        for expr in (
            "sum(journey_events_late_total)",
            "sum(journey_events_duplicate_total)",
            "sum(journey_events_dead_lettered_total)",
            'sum(journey_pos_rows_total{outcome="rejected"})',
            'sum(journey_collector_requests_total{status="400"})',
            "sum(journey_time_in_stage_seconds_count)",
        ):
            wait_for(lambda e=expr: value_of(prom, e), lambda n: n > 0, timeout_s=30)

        # Customers per stage, summed by Prometheus over both workers' owned
        # partitions, equal what the workers' /funnel reports for all customers.
        def populations() -> tuple[dict[str, float], dict[str, float]]:
            answer = prom.query("sum by (stage) (journey_stage_customers)")
            got = {r["metric"]["stage"]: float(r["value"][1]) for r in answer["data"]["result"]}
            _, funnel = workers[0].api("/funnel")
            want = dict.fromkeys(model.all_stages, 0.0)
            for entry in funnel["stages"]:
                want[entry["stage"]] = float(entry["customers"])
            if model.lapse_stage:
                want[model.lapse_stage] = float(funnel.get("lapsed", 0))
            return got, want

        _, want = wait_for(populations, lambda gw: gw[0] == gw[1], timeout_s=30)
        assert sum(want.values()) > 0
        # Faust's own sensor is served beside the engine's metrics on every worker.
        assert value_of(prom, 'count(faust_messages_received_total{job="worker"})') == 2

        queries = panel_queries()
        assert len(queries) >= 30

        def failures() -> list[str]:
            return [f for q in queries if (f := check(prom, q)) is not None]

        try:
            wait_for(failures, lambda fs: not fs, timeout_s=20, every_s=2.0)
        except AssertionError:
            missing = failures()
            raise AssertionError(
                f"{len(missing)} of {len(queries)} panel queries return no data:\n"
                + "\n".join(missing)
            ) from None
        down = [t["scrapeUrl"] for t in prom.targets() if t["health"] != "up"]
        assert down == []
    except AssertionError as exc:
        logs = "\n".join(f"--- {svc.args[0]}:\n{svc.log_tail(15)}" for svc in services)
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for service in reversed(services):
            service.stop()
        prom.stop()
        smtp.stop()
