"""``python -m loadtest.dispatch``: follow-ups decided and delivered per second by one
dispatcher, concurrent beside one at a time, in one run.

On the embedded broker, a real Redis server and an SMTP server that takes
``--relay-ms`` (50 ms) to answer each message, ``journey dispatcher`` (a child
process, every Redis guard on: claim, consent and purchase signals, quiet hours,
frequency cap) reads a backlog of cart triggers for distinct customers, first
with ``dispatch.max_in_flight`` 1 (one trigger at a time), then with
``--max-in-flight`` (default: the setting's default). Each figure is measured
between the first and the last of its run: triggers decided per second from
the outcomes' decision times on ``journey.dispatch``, emails delivered per
second from the relay's arrival times, with the dispatcher's CPU time per
trigger (Linux). Results go to stdout and to
``loadtest/results/dispatch.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from stream.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from stream.settings import DispatchSettings, Settings, load_settings, to_environ
from stream.topics import ensure_topics, read_topic
from stream.triggers.trigger import ABANDONMENT, Trigger, TriggerItem

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results" / "dispatch.json"


class SlowRelay:
    """An SMTP server (aiosmtpd) that answers each message after ``delay_s`` and keeps
    only its arrival time: the relay's latency without a catcher's parsing and files,
    which would compete with the dispatcher for the same cores."""

    host = "127.0.0.1"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.port = free_port()
        self.arrivals: list[float] = []
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay_s)
        self.arrivals.append(time.time())
        return "250 Message accepted for delivery"

    def start(self) -> SlowRelay:
        from aiosmtpd.controller import Controller

        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def triggers(run_id: str, n: int) -> list[Trigger]:
    now = int(time.time() * 1000)
    return [
        Trigger(
            trigger_id=f"{run_id}-{i}",
            rule="cart",
            kind=ABANDONMENT,
            template="cart_abandoned",
            journey_key=f"{run_id}-c{i}",
            customer_id=f"{run_id}-c{i}",
            email=f"c{i}@example.com",
            stage="decision",
            deadline=now - 60_000,
            event_at=now - 3_600_000,
            ref="cart-1",
            cause_event_id=f"e-{i}",
            cart_id="cart-1",
            items=(TriggerItem("SKU-1", "Trail Shoe", 89.5, 1),),
            value=89.5,
            currency="EUR",
            first_name="Ann",
            timezone="UTC",
            fired_at=now,
        )
        for i in range(n)
    ]


def run_settings(base: Settings, run_id: str, relay: SlowRelay, max_in_flight: int) -> Settings:
    t = {
        name: f"{getattr(base.topics, name)}-{run_id}"
        for name in ("triggers", "resolved", "dispatch", "dispatch_dlq")
    }
    return replace(
        base,
        topics=replace(base.topics, **t),
        worker=replace(base.worker, app_id=f"bench-{run_id}"),
        smtp=replace(base.smtp, host=relay.host, port=relay.port),
        journey=replace(
            base.journey,
            # Every customer is sent to: the control group would only thin the figure.
            abandonment=tuple({**r, "holdout": 0.0} for r in base.journey.abandonment),
        ),
        dispatch=replace(
            base.dispatch,
            key_prefix=f"bench-{run_id}:",
            web_port=free_port(),
            instance_id=f"bench-{run_id}",
            quiet_start="00:00",
            quiet_end="00:00",
            cap_max=1000,
            tracking_secret=uuid.uuid4().hex,
            max_in_flight=max_in_flight,
        ),
    )


def run(
    base: Settings, relay: SlowRelay, n: int, max_in_flight: int, workdir: Path, timeout: float
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    settings = run_settings(base, run_id, relay, max_in_flight)
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")
    for t in triggers(run_id, n):
        producer.send(settings.topics.triggers, key=t.journey_key.encode(), value=t.dumps())
    producer.flush()
    producer.close()
    relay.arrivals.clear()
    log = (workdir / f"dispatcher-{max_in_flight}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "dispatcher", "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **to_environ(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    #: The dispatcher's CPU seconds and deliveries when it was first seen delivering.
    first: tuple[float, int] | None = None
    try:
        while (delivered := len(relay.arrivals)) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dispatcher (max_in_flight={max_in_flight}) delivered "
                    f"{delivered} of {n}; see {log.name}"
                )
            if first is None and delivered > 0:
                first = (cpu_seconds(proc.pid), delivered)
            time.sleep(0.05)
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    outcomes = [
        orjson.loads(r.value)
        for r in read_topic(settings.broker.bootstrap, settings.topics.dispatch)
    ]
    at = sorted(o["at"] for o in outcomes)
    sent = sum(o["outcome"] == "sent" for o in outcomes)
    arrivals = sorted(relay.arrivals)
    return {
        "max_in_flight": max_in_flight,
        "triggers": n,
        "sent": sent,
        "decided_per_s": round((len(at) - 1) / max((at[-1] - at[0]) / 1000, 1e-9), 1),
        "delivered_per_s": round((len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9), 1),
        # Over the deliveries after the first one seen (start-up left out).
        "dispatcher_cpu_ms_per_trigger": None
        if first is None or n == first[1]
        else round((cpu - first[0]) * 1000 / (n - first[1]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.dispatch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--relay-ms", type=float, default=50.0)
    parser.add_argument("--max-in-flight", type=int, default=DispatchSettings.max_in_flight)
    parser.add_argument("--triggers", type=int, default=2000, help="concurrent run")
    parser.add_argument("--serial-triggers", type=int, default=200, help="one-at-a-time run")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)

    workdir = Path(tempfile.mkdtemp(prefix="journey-bench-dispatch-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    redis = EmbeddedRedis(dir=workdir / "redis").start()
    relay = SlowRelay(args.relay_ms / 1000).start()
    try:
        base = load_settings(environ={}).with_broker(broker.url)
        base = replace(
            base,
            redis=replace(base.redis, url=redis.url),
            # A loopback stack of its own, as the tests and the demo run.
            security=replace(base.security, allow_default_secrets=True),
        )
        serial = run(base, relay, args.serial_triggers, 1, workdir, args.timeout)
        print(json.dumps(serial), flush=True)
        concurrent = run(base, relay, args.triggers, args.max_in_flight, workdir, args.timeout)
        print(json.dumps(concurrent), flush=True)
    finally:
        relay.stop()
        redis.stop()
        broker.stop()
    result = {
        "relay_ms": args.relay_ms,
        "one_at_a_time": serial,
        "concurrent": concurrent,
        "speedup_decided": round(concurrent["decided_per_s"] / serial["decided_per_s"], 1),
        "speedup_delivered": round(concurrent["delivered_per_s"] / serial["delivered_per_s"], 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other processes' demand on the cores while it ran (1, 5, 15 minutes).
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
