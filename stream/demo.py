"""``journey demo``: the whole engine on loopback, driven by simulated shoppers.

Starts the embedded stack (broker, Redis, SMTP catcher), the worker, the
dispatcher, the collector and the POS producer as child processes, then plays
simulated journeys in real time: web sessions through the collector over HTTP
(Segment ``/v1/batch`` calls, as an SDK would send them) and in-store sales
through the POS producer (rows appended to a JSON Lines export it follows).
Abandonment waits are shortened to seconds, so carts are abandoned and emails
land in the catcher's folder (one .eml per message) within a minute or two. A
live summary is read from the services' own ``/metrics``; at the end a short
report is printed and everything is stopped.

Before the live shoppers, a month of journey-map shoppers (``journey simulate
--map``: a comparison page that helps, a support contact that hurts, an iOS
checkout incident) is published, so the live journey map (``/map``, its
address printed at the start) has pain points, moments of truth and alerts to
show; the final report lists those found.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from stream.demo_loop import ClosedLoop, collector_sender
from stream.demo_shoppers import Shoppers, demo_events, http
from stream.embedded import EmbeddedStack, free_port
from stream.embedded.stack import parent_death_hook
from stream.observability.histograms import histogram_quantile
from stream.reactions import Planted, Reactions
from stream.settings import Settings, to_environ
from stream.topics import ensure_topics

REFRESH_S = 2.0
#: Abandonment waits in the demo (seconds) instead of 30/15/60 minutes.
DEMO_WAITS_S = {"cart": 10.0, "checkout": 8.0, "browse": 15.0}
#: Conversion windows in the demo (seconds) instead of 7 days, and the grace after them.
DEMO_WINDOW_S, DEMO_GRACE_S = 20.0, 3.0
#: The demo's control groups: a large share held out, so a short run measures both arms.
DEMO_HOLDOUT = 0.3
#: How the demo's shoppers answer follow-ups (buy rates with and without the email):
#: the uplift the demo's report should find; browse emails are planted with no effect.
DEMO_PLANTED = {
    "cart": Planted(treated=0.45, control=0.15),
    "checkout": Planted(treated=0.55, control=0.25),
    "browse": Planted(treated=0.15, control=0.15),
}


class Child:
    """A ``journey`` subcommand run as a child process, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", *args],
                env={**os.environ, **env},
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=parent_death_hook(),
            )

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text endpoint: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http(url)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    if status != 200:
        return out
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    )


def by_label(samples: dict, name: str, label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for (n, ls), v in samples.items():
        if n == name:
            out[dict(ls).get(label, "")] += int(v)
    return out


def wait_ready(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while http(url)[0] != 200:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s; see {child.log}")
        time.sleep(0.2)


def emails_in(mailbox: Path) -> int:
    return sum(1 for _ in mailbox.glob("*.eml")) if mailbox.is_dir() else 0


def render(
    worker: dict,
    collector: dict,
    dispatcher: dict,
    shoppers: Shoppers,
    elapsed: float,
    mailbox: Path,
) -> str:
    ingested = by_label(worker, "journey_events_ingested_total", "channel")
    types = by_label(worker, "journey_events_ingested_total", "type")
    stages = by_label(worker, "journey_stage_customers", "stage")
    statuses = by_label(collector, "journey_collector_requests_total", "status")
    dlq = by_label(worker, "journey_events_dead_lettered_total", "reason")
    abandoned = by_label(worker, "journey_abandonments_total", "kind")
    triggers = by_label(worker, "journey_triggers_total", "rule")
    outcomes = by_label(dispatcher, "journey_dispatch_outcomes_total", "outcome")
    converted = by_label(worker, "journey_followup_windows_closed_total", "converted")
    lines = [
        f"journey demo - {elapsed:5.0f}s",
        f"  events in      {sum(ingested.values()):7d}   "
        + "  ".join(f"{c}={n}" for c, n in sorted(ingested.items())),
        "  by type        " + "  ".join(f"{t}={n}" for t, n in types.most_common(8)),
        "  collector      " + "  ".join(f"HTTP {s}={n}" for s, n in sorted(statuses.items())),
        f"  dead-lettered  {sum(dlq.values()):7d}   "
        + "  ".join(f"{r}={n}" for r, n in dlq.items()),
        f"  duplicates     {int(total(worker, 'journey_events_duplicate_total')):7d}",
        "  stages now     " + "  ".join(f"{s}={n}" for s, n in stages.items() if n),
        f"  transitions    {int(total(worker, 'journey_stage_transitions_total')):7d}",
        f"  POS rows sent  {shoppers.sent['pos']:7d}",
        "  abandoned      " + "  ".join(f"{k}={n}" for k, n in sorted(abandoned.items()) if n),
        "  follow-ups     " + "  ".join(f"{k}={n}" for k, n in sorted(triggers.items()) if n),
        "  dispatch       " + "  ".join(f"{k}={n}" for k, n in sorted(outcomes.items()) if n),
        f"  emails         {emails_in(mailbox):7d}   in {mailbox}",
        f"  windows closed {sum(converted.values()):7d}   bought after a follow-up="
        f"{converted.get('true', 0)}",
    ]
    return "\n".join(lines)


def run_demo(settings: Settings, duration_s: float, rate: float, workdir: Path | None) -> int:
    """Run the demo; returns the process exit status."""
    workdir = (workdir or Path("var") / "demo" / time.strftime("%Y%m%d-%H%M%S")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"journey demo: starting the embedded stack in {workdir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children: list[Child] = []
    with EmbeddedStack(workdir) as stack:
        assert stack.redis is not None and stack.smtp is not None
        settings = replace(
            settings.with_broker(stack.broker.url),
            redis=replace(settings.redis, url=stack.redis.url),
            smtp=replace(settings.smtp, host=stack.smtp.host, port=stack.smtp.port),
            worker=replace(
                settings.worker,
                data_dir=str(workdir / "worker"),
                web_port=free_port(),
                recovery_consistency_check=False,  # Tansu: see WorkerSettings
                api_tokens={stack.api_token: "admin"},
            ),
            collector=replace(settings.collector, port=free_port()),
            pos=replace(
                settings.pos,
                checkpoint=str(workdir / "pos" / "checkpoint.json"),
                rejects=str(workdir / "pos" / "rejects.jsonl"),
            ),
            # Loopback only: the packaged placeholder secrets are fine here.
            security=replace(settings.security, allow_default_secrets=True),
            # A demo wants to see stages settle and carts abandoned within seconds.
            journey=replace(
                settings.journey,
                allowed_lateness_s=5.0,
                abandonment=tuple(
                    {
                        **rule,
                        "wait_s": DEMO_WAITS_S.get(rule["name"], rule["wait_s"]),
                        "holdout": DEMO_HOLDOUT,
                    }
                    for rule in settings.journey.abandonment
                ),
            ),
            attribution=replace(
                settings.attribution,
                window_s=DEMO_WINDOW_S,
                decision_grace_s=DEMO_GRACE_S,
                min_per_arm=10,
            ),
            dispatch=replace(
                settings.dispatch,
                web_port=free_port(),
                # Simulated shoppers live in five time zones: no quiet hours in a demo.
                quiet_start="00:00",
                quiet_end="00:00",
            ),
        )
        collector_url = f"http://127.0.0.1:{settings.collector.port}"
        settings = replace(
            settings, dispatch=replace(settings.dispatch, tracking_base_url=collector_url)
        )
        ensure_topics(settings)
        env = to_environ(settings)
        logs = workdir / "logs"
        pos_file = workdir / "pos" / "sales.jsonl"
        pos_file.parent.mkdir(parents=True, exist_ok=True)
        pos_file.touch()
        try:
            worker = Child("worker", ["worker", "--log-level", "warning"], env, logs / "worker.log")
            collector = Child("collector", ["collector"], env, logs / "collector.log")
            pos = Child("pos", ["pos", str(pos_file), "--follow"], env, logs / "pos.log")
            dispatcher = Child(
                "dispatcher", ["dispatcher", "--log-level", "warning"], env, logs / "dispatcher.log"
            )
            children += [worker, collector, pos, dispatcher]
            worker_url = f"http://127.0.0.1:{settings.worker.web_port}"
            dispatcher_url = f"http://127.0.0.1:{settings.dispatch.web_port}"
            mailbox = stack.smtp.maildir
            wait_ready(f"{collector_url}/health", collector, 30)
            wait_ready(f"{worker_url}/ready", worker, 90)
            wait_ready(f"{dispatcher_url}/ready", dispatcher, 90)
            history = map_history(settings)
            events = demo_events(rate, duration_s, seed=int(time.time()))
            customers = len({e.get("customer_id") or e.get("anonymous_id") for e in events})
            shoppers = Shoppers(settings, events, pos_file, stop)
            print(
                f"journey demo: worker {worker_url}  collector {collector_url}  "
                f"{customers} simulated customers over {duration_s:.0f}s (Ctrl-C stops)\n"
                f"journey demo: the worker's API token (admin) is {stack.api_token}: "
                f"curl -H 'Authorization: Bearer {stack.api_token}' {worker_url}/funnel\n"
                f"journey demo: the live journey map ({history} events of a month of history "
                f"first): {worker_url}/map?token={stack.api_token}",
                flush=True,
            )
            reactions = Reactions(
                window_ms=int(DEMO_WINDOW_S * 1000), rules=DEMO_PLANTED, seed=int(time.time())
            )
            loop = ClosedLoop(settings, reactions, collector_sender(settings), stop)
            started = time.monotonic()
            shoppers.start()
            loop.start()
            tty = sys.stdout.isatty()
            try:
                while not stop.wait(REFRESH_S):
                    elapsed = time.monotonic() - started
                    text = render(
                        scrape(f"{worker_url}/metrics"),
                        scrape(f"{collector_url}/metrics"),
                        scrape(f"{dispatcher_url}/metrics"),
                        shoppers,
                        elapsed,
                        mailbox,
                    )
                    print(
                        ("\033[2J\033[H" if tty else "") + text + ("" if tty else "\n"), flush=True
                    )
                    if elapsed >= duration_s and not shoppers.is_alive():
                        break
            except KeyboardInterrupt:
                pass
            stop.set()
            shoppers.join(5)
            loop.join(5)
            report = final_report(
                stack.api_token,
                worker_url,
                collector_url,
                dispatcher_url,
                mailbox,
                shoppers,
                time.monotonic() - started,
                loop,
            )
            print(json.dumps(report, indent=2), flush=True)
            print(f"journey demo: emails (one .eml each) in {mailbox}", flush=True)
            print(f"journey demo: logs in {logs}", flush=True)
        finally:
            for child in reversed(children):
                child.stop()
    return 0


#: Journey-map shoppers of the history published before the live ones.
HISTORY_CUSTOMERS = 1200
HISTORY_DAYS = 30


def map_history(settings: Settings) -> int:
    """Publish a month of journey-map shoppers, ended a week ago; returns the events sent."""
    from stream.simulator import MAP_PERSONAS, Incident, generate, produce

    start = int(time.time() * 1000) - (HISTORY_DAYS + 7) * 86_400_000
    events = generate(
        HISTORY_CUSTOMERS,
        seed=20,
        start_ms=start,
        span_s=(HISTORY_DAYS - 7) * 86_400,
        personas=MAP_PERSONAS,
        incident=Incident(day=HISTORY_DAYS - 12, days=3, platform="ios"),
    )
    produce(settings, events, rate=None, pack_sessions=True)
    return len(events)


def map_findings(journey_map: dict[str, Any] | None) -> dict[str, Any] | None:
    """The journey map's pain points, moments of truth and open alerts (any channel)."""
    if journey_map is None:
        return None

    def found(verdict: str) -> list[dict[str, Any]]:
        return [
            {"stage": t["stage"], "touchpoint": t["touchpoint"], "lift": t["lift"]}
            for t in journey_map["touchpoints"]
            if t["channel"] is None and t["verdict"] == verdict
        ]

    return {
        "customers": journey_map["customers"],
        "pain_points": found("pain_point"),
        "moments_of_truth": found("moment_of_truth"),
        "open_alerts": [
            {"kind": a["kind"], "stage": a["stage"], "touchpoint": a["touchpoint"]}
            for a in journey_map["alerts"]
            if a["closed_at"] is None
        ],
    }


def final_report(
    api_token: str,
    worker_url: str,
    collector_url: str,
    dispatcher_url: str,
    mailbox: Path,
    shoppers: Shoppers,
    elapsed: float,
    loop: ClosedLoop,
) -> dict[str, Any]:
    worker = scrape(f"{worker_url}/metrics")
    collector = scrape(f"{collector_url}/metrics")
    dispatcher = scrape(f"{dispatcher_url}/metrics")
    auth = {"Authorization": f"Bearer {api_token}"}
    status, funnel = http(f"{worker_url}/funnel", headers=auth)
    map_status, journey_map = http(f"{worker_url}/journey-map", headers=auth)
    return {
        "seconds": round(elapsed, 1),
        "web_events_sent": shoppers.sent["web"],
        "pos_rows_sent": shoppers.sent["pos"],
        "collector_responses": dict(
            by_label(collector, "journey_collector_requests_total", "status")
        ),
        "events_ingested": dict(by_label(worker, "journey_events_ingested_total", "channel")),
        "dead_lettered": int(total(worker, "journey_events_dead_lettered_total")),
        "duplicates_dropped": int(total(worker, "journey_events_duplicate_total")),
        "transitions": int(total(worker, "journey_stage_transitions_total")),
        "abandoned": dict(by_label(worker, "journey_abandonments_total", "kind")),
        "triggers": dict(by_label(worker, "journey_triggers_total", "rule")),
        "dispatch": dict(by_label(dispatcher, "journey_dispatch_outcomes_total", "outcome")),
        "emails": emails_in(mailbox),
        # Watermark passing a deadline -> trigger emitted (bucket upper bounds).
        "deadline_fire_delay_s": {
            "count": int(total(worker, "journey_deadline_fire_delay_seconds_count")),
            "p50_at_most": histogram_quantile(worker, "journey_deadline_fire_delay_seconds", 0.5),
            "p99_at_most": histogram_quantile(worker, "journey_deadline_fire_delay_seconds", 0.99),
        },
        "mailbox": str(mailbox),
        "funnel": json.loads(funnel) if status == 200 else None,
        # Follow-ups whose conversion window closed, against what the shoppers were
        # planted to do (only windows closed before the end are counted).
        "followups": loop.summary(worker_url, api_token, DEMO_PLANTED),
        "journey_map": map_findings(json.loads(journey_map) if map_status == 200 else None),
        "journey_map_url": f"{worker_url}/map?token={api_token}",
    }
