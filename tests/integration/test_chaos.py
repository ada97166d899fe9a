"""Chaos: the whole engine under live load while its processes are killed and paused.

Two workers, the dispatcher, the collector and the POS producer run as child
processes. Simulated shoppers send web sessions through the collector over
HTTP and append in-store sales to the export the POS producer follows, for
the whole run. A fault schedule derived from a seed (:mod:`tests.chaos`)
kills workers with -9 (at least once wiping the data dir), pauses them
(SIGSTOP) past the consumer session timeout, kills the dispatcher; every
killed process is restarted. Then the load stops, the engine drains, and the
emails caught and the final journeys are compared with the oracle (``journey
replay``) run over exactly the events on ``touchpoints``.

``CHAOS_SEED`` and ``CHAOS_S`` (seconds of faults) choose the run; ``make
chaos`` runs it long. The seed fixes the schedule and the shoppers, not the
interleaving: a run prints both, and its logs stay under pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream import contract
from stream.demo import DEMO_WAITS_S
from stream.demo_shoppers import Shoppers, demo_events
from stream.dispatch import outcomes
from stream.embedded import SmtpCatcher, free_port
from stream.ingest.identity import resolve
from stream.journey.model import journey_model
from stream.journey.replay import Oracle, run_oracle
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.triggers.trigger import ABANDONMENT, Trigger
from tests.chaos import PAUSE_WORKER, Fault, describe, fault_schedule
from tests.helpers import read_topic, wait_for
from tests.integration.test_journey_oracle import comparable
from tests.integration.test_ownership import watermark_lags
from tests.integration.test_scale_out import journey_mismatches, owned, populations, with_data_dir
from tests.procs import Dispatcher, Service, Worker, dispatch_settings, http_get

SEED = int(os.environ.get("CHAOS_SEED", "20260101"))
FAULT_PHASE_S = float(os.environ.get("CHAOS_S", "75"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900 + 2 * FAULT_PHASE_S)]
#: Simulated events per second sent by the shoppers (web through the collector, POS rows).
RATE = 20.0
#: Load before the first fault, so faults hit a busy engine.
WARMUP_S = 10.0
#: Larger than any delay between an event's time and its arrival on ``touchpoints``
#: (the POS producer polls its export), so no event is late and the oracle, which
#: reads the log in event-time order, sees what the stream sees.
LATENESS_S = 20.0
FINAL = {
    outcomes.SENT,
    outcomes.SUPPRESSED_CONSENT,
    outcomes.CAPPED,
    outcomes.CANCELLED_PURCHASED,
    outcomes.UNREACHABLE,
    outcomes.FAILED,
    outcomes.ERASED,
}
PURCHASES = ("purchase", "pos_purchase")


def chaos_settings(settings: Settings, redis_url: str, smtp_port: int) -> Settings:
    """The demo's short abandonment waits, no quiet hours, caps that never bind."""
    journey = replace(
        settings.journey,
        allowed_lateness_s=LATENESS_S,
        abandonment=tuple(
            {**rule, "wait_s": DEMO_WAITS_S.get(rule["name"], rule["wait_s"])}
            for rule in settings.journey.abandonment
        ),
    )
    s = replace(settings, journey=journey, collector=replace(settings.collector, port=free_port()))
    s = dispatch_settings(
        s, redis_url, smtp_port, cap_max=1000, instance_lease_s=2.0, max_attempts=8
    )
    ensure_topics(s)
    return s


class Faults:
    """Applies a fault schedule to running services, one fault after another."""

    def __init__(self, services: dict[str, Service]) -> None:
        self.services = services
        self.paused: Service | None = None
        self.log: list[str] = []

    def run(self, faults: list[Fault], started: float) -> None:
        for fault in faults:
            # The schedule's clock: when the next fault is due, not a wait for an outcome.
            time.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            line = f"{time.monotonic() - started:7.1f}s: {fault.kind} {fault.target}"
            print(line, flush=True)
            self.log.append(line)
            self.apply(fault)

    def apply(self, fault: Fault) -> None:
        service = self.services[fault.target]
        if not service.alive():
            raise AssertionError(f"{fault.target} died on its own:\n{service.log_tail()}")
        assert service.proc is not None
        if fault.kind == PAUSE_WORKER:
            service.proc.send_signal(signal.SIGSTOP)
            self.paused = service
            time.sleep(fault.hold_s)  # the pause itself
            service.proc.send_signal(signal.SIGCONT)
            self.paused = None
            return
        service.proc.kill()
        service.proc.wait(30)
        if fault.wipe:
            shutil.rmtree(service.settings.worker.data_dir, ignore_errors=True)
        time.sleep(fault.hold_s)  # down time before the restart
        service.start()

    def release(self) -> None:
        if self.paused is not None and self.paused.proc is not None:
            self.paused.proc.send_signal(signal.SIGCONT)


def touchpoints_on_topic(s: Settings) -> list[contract.Touchpoint]:
    """Every valid touchpoint on ``touchpoints``, once per event id, in event-time order."""
    seen: dict[str, contract.Touchpoint] = {}
    for record in read_topic(s.broker.bootstrap, s.topics.touchpoints, timeout_s=30):
        for tp in contract.decode_message(record.value or b""):
            if isinstance(tp, contract.Touchpoint):
                seen.setdefault(tp.event_id, tp)
    return sorted(seen.values(), key=lambda tp: (tp.timestamp, tp.event_id))


def quiescence(workers: list[Worker], s: Settings, horizon_s: float) -> dict[str, Any]:
    """Ownership and lag of the input, and how far the slowest watermark is short of
    ``horizon_s`` (wall-clock seconds)."""
    inputs = s.topics.touchpoints
    shares = [owned(w, inputs) for w in workers]
    lags = [lag for w in workers for lag in watermark_lags(w)]
    watermark = time.time() - max(lags) if lags else 0.0
    q = {
        "partitions": sorted(set().union(*shares)),
        "shared": bool(shares[0] & shares[1]),
        # The input's lag (``touchpoints.resolved`` carries marks every second, so
        # its lag is never steadily zero; the watermarks below stand for it).
        "consumer_lag": sum(
            w.metric("journey_consumer_lag_messages", topic=inputs, partition=str(p))
            for w, share in zip(workers, shares, strict=True)
            for p in share
        ),
        "watermark_short_s": round(max(0.0, horizon_s - watermark), 1),
        "watermarks": len(lags),
    }
    print(f"quiescence: {q}", flush=True)
    return q


def quiet(q: dict[str, Any], partitions: int) -> bool:
    return (
        q["partitions"] == list(range(partitions))
        and not q["shared"]
        and q["consumer_lag"] == 0
        and q["watermarks"] >= partitions
        and q["watermark_short_s"] == 0
    )


def decisions(s: Settings) -> tuple[set[str], dict[str, list[str]]]:
    """Trigger ids on ``journey.triggers``; each one's final outcomes on ``journey.dispatch``."""
    bootstrap = s.broker.bootstrap
    fired = {
        orjson.loads(r.value)["trigger_id"]
        for r in read_topic(bootstrap, s.topics.triggers, timeout_s=30)
    }
    final: dict[str, list[str]] = {}
    for r in read_topic(bootstrap, s.topics.dispatch, timeout_s=30):
        o = orjson.loads(r.value)
        if o["outcome"] in FINAL:
            final.setdefault(o["trigger_id"], []).append(o["outcome"])
    return fired, final


def expected_emails(
    oracle: Oracle, events: list[contract.Touchpoint], lateness_ms: int
) -> tuple[dict[str, Trigger], dict[str, Trigger]]:
    """The oracle's triggers that must be emailed, and those that may be.

    Every trigger with an address is sent (no unsubscribes in the simulated
    log, no quiet hours, caps that never bind), except an abandonment whose
    journey has a purchase after its wait began: the dispatcher cancels it if
    the purchase is in Kafka when it decides. One within the allowed lateness
    of the deadline always is (the trigger fires only once every source's
    events have passed it), so that trigger must not be sent; a later one may
    or may not be, depending on when the dispatcher decides.
    """
    bought: dict[str, list[int]] = {}
    for tp in events:
        if tp.type in PURCHASES:
            key = resolve(tp, oracle.identity.get).journey_key
            bought.setdefault(key, []).append(tp.timestamp)
    must: dict[str, Trigger] = {}
    may: dict[str, Trigger] = {}
    for t in oracle.triggers:
        if not t.email:
            continue
        after = [at for at in bought.get(t.journey_key, []) if at > t.event_at]
        if t.kind != ABANDONMENT or not after:
            must[t.trigger_id] = t
        elif min(after) > t.deadline + lateness_ms:
            may[t.trigger_id] = t
    return must, may


def email_report(
    caught: Counter[str],
    must: dict[str, Trigger],
    may: dict[str, Trigger],
    oracle: Oracle,
    final: dict[str, list[str]],
    fired: set[str],
) -> tuple[dict[str, int], str]:
    """Counts of duplicate, false and missing emails, and a readable diff of them."""
    everything = {t.trigger_id: t for t in oracle.triggers}
    duplicates = {tid: n for tid, n in caught.items() if n > 1}
    false = sorted(tid for tid in caught if tid not in must and tid not in may)
    missing = sorted(tid for tid in must if tid not in caught)

    def line(tid: str) -> str:
        t = everything.get(tid)
        what = (
            "not a trigger of the oracle"
            if t is None
            else f"rule={t.rule} journey={t.journey_key} event_at={t.event_at} "
            f"deadline={t.deadline} to={t.email}"
        )
        return f"    {tid}: {what}; on journey.triggers={tid in fired} outcomes={final.get(tid)}"

    lines = [f"emails: {sum(caught.values())} caught, {len(must)} expected, {len(may)} optional"]
    for name, ids in (("duplicates", sorted(duplicates)), ("false", false), ("missing", missing)):
        lines.append(f"  {name}: {len(ids)}")
        lines += [line(tid) for tid in ids[:15]]
    counts = {"duplicates": len(duplicates), "false": len(false), "missing": len(missing)}
    return counts, "\n".join(lines)


def journey_report(mismatches: list[tuple]) -> str:
    lines = [f"journeys: {len(mismatches)} differ from the oracle"]
    for key, *rest in mismatches[:15]:
        if len(rest) == 2 and isinstance(rest[0], dict) and isinstance(rest[1], dict):
            got, want = rest
            fields = sorted(k for k in want if got.get(k) != want.get(k))
            lines.append(f"  {key}:")
            lines += [f"    {f}: stream {got.get(f)!r} != oracle {want[f]!r}" for f in fields]
        else:
            lines.append(f"  {key}: HTTP {rest[0]} {rest[1]!r}"[:500])
    return "\n".join(lines)


def test_engine_under_kills_and_pauses_equals_the_oracle(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    s = chaos_settings(settings, redis_server.url, smtp.port)
    faults = fault_schedule(SEED, FAULT_PHASE_S, s.broker.session_timeout_s)
    schedule = describe(SEED, FAULT_PHASE_S, faults)
    print(schedule, flush=True)
    export = tmp_path / "pos" / "sales.jsonl"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.touch()
    workers = [
        Worker(with_data_dir(s, tmp_path / f"worker-{i}-data"), tmp_path / f"worker-{i}.log")
        for i in (1, 2)
    ]
    dispatcher = Dispatcher(s, tmp_path / "dispatcher.log")
    collector = Service(["collector"], s, tmp_path / "collector.log", {})
    pos = Service(["pos", str(export), "--follow"], s, tmp_path / "pos.log", {})
    services: list[Service] = [*workers, dispatcher, collector, pos]
    chaos = Faults({"worker-1": workers[0], "worker-2": workers[1], "dispatcher": dispatcher})
    stop_load = threading.Event()
    try:
        for service in services:
            service.start()
        for worker in workers:
            worker.wait_ready(timeout=180)
        dispatcher.wait_ready(timeout=120)
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{s.collector.port}/health")[0],
            lambda status: status == 200,
            timeout_s=60,
        )

        last = faults[-1]
        load_s = WARMUP_S + last.at_s + last.hold_s + 5.0
        shoppers = Shoppers(s, demo_events(RATE, load_s, SEED), export, stop_load)
        started = time.monotonic()
        shoppers.start()
        chaos.run(faults, started + WARMUP_S)
        stop_load.set()
        shoppers.join(30)
        assert not shoppers.is_alive()
        faulted_s = time.monotonic() - started
        # Every sale appended to the export reached the topic.
        pos_sent = shoppers.sent["pos"]
        wait_for(
            lambda: sum(1 for tp in touchpoints_on_topic(s) if tp.type == "pos_purchase"),
            lambda n: n >= pos_sent,
            timeout_s=60,
            every_s=1.0,
        )
        events = touchpoints_on_topic(s)
        assert len(events) > 100, f"too little load: {shoppers.sent}"
        longest_wait_s = max(float(rule["wait_s"]) for rule in s.journey.abandonment)
        horizon_s = events[-1].timestamp / 1000 + longest_wait_s + 1.0

        # Quiescence: every partition owned and read to its end, every watermark past
        # every deadline; then every trigger decided. On a deadline the comparison still
        # runs, so the failure shows what differs.
        problems: list[str] = []
        try:
            wait_for(
                lambda: quiescence(workers, s, horizon_s),
                lambda q: quiet(q, s.topics.partitions),
                timeout_s=300,
                every_s=1.0,
            )
        except AssertionError as exc:
            problems.append(f"workers not quiescent: {exc}")
        lateness_ms = int(LATENESS_S * 1000)
        oracle = run_oracle(
            events, journey_model(s), lateness_ms, int(time.time() * 1000) - lateness_ms
        )
        expected = {t.trigger_id for t in oracle.triggers}
        try:
            wait_for(
                lambda: (decisions(s), dispatcher.metric("journey_dispatch_scheduled")),
                lambda r: set(r[0][1]) >= expected | r[0][0] and r[1] == 0,
                timeout_s=240,
                every_s=2.0,
            )
        except AssertionError as exc:
            problems.append(f"dispatcher not idle: {str(exc)[:300]}")
        fired, final = decisions(s)

        caught = Counter(str(m.message["X-Journey-Trigger-Id"]) for m in smtp.received())
        must, may = expected_emails(oracle, events, lateness_ms)
        counts, emails = email_report(caught, must, may, oracle, final, fired)
        want = {st.key: comparable(st.summary()) for st in oracle.final_states()}
        mismatches = journey_mismatches(workers[0], want)
        stages = sorted(journey_model(s).all_stages)
        want_population = {st: 0.0 for st in stages}
        for st in oracle.final_states():
            want_population[st.stage] += 1
        try:
            got_population = wait_for(
                lambda: populations(workers, stages),
                lambda got: got == want_population,
                timeout_s=30,
                every_s=1.0,
            )
        except AssertionError:
            got_population = populations(workers, stages)
        crashed = [service.args[0] for service in services if not service.alive()]
        print(
            f"chaos seed {SEED}: {len(events)} events, {len(want)} journeys, "
            f"{len(expected)} triggers, {sum(caught.values())} emails "
            f"({len(must)} expected, {len(may)} optional), "
            f"load and faults {faulted_s:.0f}s, shoppers {dict(shoppers.sent)}",
            flush=True,
        )
        report = "\n".join(
            [
                schedule,
                *chaos.log,
                *problems,
                emails,
                journey_report(mismatches),
                f"stage populations: stream {got_population} oracle {want_population}",
                f"crashed on their own: {crashed}",
                f"logs: {tmp_path}",
            ]
        )
        assert counts == {"duplicates": 0, "false": 0, "missing": 0}, report
        assert mismatches == [], report
        assert got_population == want_population, report
        assert crashed == [], report
    finally:
        stop_load.set()
        chaos.release()
        for service in reversed(services):
            service.stop()
