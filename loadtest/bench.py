"""``journey bench``: throughput of the journey pipeline beside its baselines, in one run.

On the embedded broker (or ``--broker-url``), a topic is pre-filled with
simulated journeys, then the consumers below read the same topic one after the other. The
time-ordered log goes out in producer batches of ``--sdk-batch`` consecutive
events (many customers each, as a server-side SDK flushes them), each packed
into one message per destination partition as the collector and the POS
producer publish them (``--sdk-batch 0``: one message per session and routing
key, which in a log of many shoppers is mostly one event per message).

(a) raw: aiokafka + orjson + a dict update per event, the limit;
(b) naive: a Faust agent doing one table write per event (memory store);
(c) pipeline: ``journey worker`` with the full ingest + journey logic on RocksDB,
    abandonment deadlines and triggers included, as ``--workers`` processes of
    one consumer group (default: one per core, as it is deployed); the delay
    between a journey partition's watermark passing each deadline and the
    trigger's emission is read back from ``journey.triggers`` (p50/p99). With
    more than one worker, the same pipeline then runs again as a single worker
    (its own group and internal topics), so both figures come from one run.

Each figure is events/s between the first and the last event its consumer
handled, measured inside that consumer. Results go to stdout and to
``loadtest/results/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest import latency
from loadtest.baselines import raw
from stream import simulator
from stream.embedded import EmbeddedBroker, free_port
from stream.settings import Settings, load_settings, to_environ
from stream.topics import ensure_topics

#: The checkout the benchmark runs from (it is a development tool, not in the wheel).
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results" / "bench.json"
DAY_MS = 86_400_000


def metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def run_naive(topic: str, events: int, bootstrap: str, timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.baselines", "naive", topic, str(events), bootstrap],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"naive baseline failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pipeline(
    settings: Settings,
    events: int,
    workdir: Path,
    timeout: float,
    workers: int = 1,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Run ``workers`` journey worker processes (one consumer group) over the backlog.

    Throughput is the events applied by all of them over the span from the
    first event any of them applied to the last. The workers' CPU time per
    event (and the embedded broker's, given its pid) covers about that span.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen, str, Any]] = []
    for i in range(workers):
        port = free_port()
        worker_settings = replace(
            settings,
            worker=replace(settings.worker, web_port=port, data_dir=str(workdir / f"worker{i}")),
        )
        env = {**os.environ, **to_environ(worker_settings)}
        log = (workdir / f"worker{i}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, f"http://127.0.0.1:{port}/metrics", log))
    deadline = time.monotonic() + timeout
    #: Per worker, (CPU seconds, events applied) when it was first seen applying.
    first: dict[int, tuple[float, float]] = {}
    broker_cpu_start = None
    try:
        while True:
            ms = [metrics(url) for _, url, _ in procs]
            for i, m in enumerate(ms):
                if i not in first and m.get("journey_events_applied_total", 0) > 0:
                    # The client's process collector reports CPU on Linux only.
                    cpu0 = m.get("process_cpu_seconds_total", float("nan"))
                    first[i] = (cpu0, m["journey_events_applied_total"])
                    if broker_cpu_start is None and broker_pid is not None:
                        broker_cpu_start = process_cpu_seconds(broker_pid)
            applied = sum(m.get("journey_events_applied_total", 0) for m in ms)
            if applied >= events:
                break
            for i, (proc, _, _) in enumerate(procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; see {workdir / f'worker{i}.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline did not apply {events} events in {timeout}s: {ms}")
            time.sleep(0.5)
        active = [m for m in ms if m.get("journey_events_applied_total", 0) > 0]
        seconds = max(m["journey_last_event_applied_timestamp_seconds"] for m in active) - min(
            m["journey_first_event_applied_timestamp_seconds"] for m in active
        )
        # CPU per event, from each worker's first poll with events applied to the
        # last (a figure machines' load moves less than events/s; polls 0.5 s apart).
        cpu = sum(
            ms[i].get("process_cpu_seconds_total", float("nan")) - c for i, (c, _) in first.items()
        )
        counted = sum(ms[i]["journey_events_applied_total"] - a for i, (_, a) in first.items())
        broker_cpu = None
        if broker_cpu_start is not None and broker_pid is not None:
            end = process_cpu_seconds(broker_pid)
            broker_cpu = None if end is None else end - broker_cpu_start
        return {
            "events": events,
            "seconds": seconds,
            "eps": events / seconds,
            "workers": workers,
            "applied_per_worker": [round(m.get("journey_events_applied_total", 0)) for m in ms],
            "state_writes": sum(m.get("journey_state_writes_total", 0) for m in ms),
            "transitions_at_end": sum(m.get("journey_stage_transitions_total", 0) for m in ms),
            "identity_links_unanswered": sum(
                m.get("journey_identity_links_unanswered_total", 0) for m in ms
            ),
            "worker_cpu_us_per_event": (
                round(cpu / counted * 1e6, 1) if counted and not math.isnan(cpu) else None
            ),
            "broker_cpu_us_per_event": (
                round(broker_cpu / counted * 1e6, 1) if broker_cpu is not None and counted else None
            ),
        }
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def pipeline_settings(base: Settings, run_id: str, partitions: int, prefix: str) -> Settings:
    """Settings for one pipeline run: its own consumer group and internal topics.

    Every run reads the same ``bench-<run>-touchpoints``; ``prefix`` names the
    rest (resolved, transitions, triggers, changelogs through the app id).
    """
    names: dict[str, Any] = {
        f: f"bench-{run_id}-{prefix}{getattr(base.topics, f)}"
        for f in (
            "resolved",
            "dlq",
            "transitions",
            "triggers",
            "timers",
            "dispatch",
            "dispatch_dlq",
            "links",
        )
    }
    names["touchpoints"] = f"bench-{run_id}-{base.topics.touchpoints}"
    topics = replace(base.topics, partitions=partitions, **names)
    app_id = f"bench-{run_id}-{prefix.rstrip('-')}" if prefix else f"bench-{run_id}"
    return replace(base, topics=topics, worker=replace(base.worker, app_id=app_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="journey bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--min-events", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--broker-url", default="", help="use this broker instead of the embedded one"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--sdk-batch",
        type=int,
        default=100,
        help="events per producer batch, packed per destination partition "
        "(Segment SDKs flush 100); 0: one message per session and routing key",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="journey worker processes for (c), one consumer group, one per core as in "
        "production (default: the cores, at most 4); with more than one, the same "
        "pipeline also runs as one worker, after it",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # The admin and producer clients' connection chatter would bury the figures.
    logging.getLogger("kafka").setLevel(logging.WARNING)

    workdir = Path(tempfile.mkdtemp(prefix="journey-bench-"))
    broker = None
    url = args.broker_url
    if not url:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        url = broker.url
    try:
        run_id = uuid.uuid4().hex[:6]
        base = load_settings(environ={}).with_broker(url)
        if broker is not None:  # Tansu: see WorkerSettings.recovery_consistency_check
            base = replace(base, worker=replace(base.worker, recovery_consistency_check=False))
        settings = pipeline_settings(base, run_id, args.partitions, "")
        # The single-worker run reads the same touchpoints with its own group and
        # its own internal topics (a group reading the other's would re-apply them).
        single = pipeline_settings(base, run_id, args.partitions, "w1-")
        ensure_topics(settings)
        ensure_topics(single)
        start = int(time.time() * 1000) - 3 * DAY_MS
        t = time.perf_counter()
        events = simulator.generate(
            args.customers, seed=args.seed, start_ms=start, span_s=24 * 3600
        )
        gen_s = time.perf_counter() - t
        if len(events) < args.min_events:
            raise SystemExit(
                f"only {len(events)} events for {args.customers} customers; raise --customers"
            )
        t = time.perf_counter()
        messages = simulator.produce(
            settings, events, rate=None, pack_sessions=True, sdk_batch=args.sdk_batch
        )
        produce_s = time.perf_counter() - t
        n = len(events)
        print(
            f"pre-filled {settings.topics.touchpoints}: {n} events, {args.customers} customers, "
            f"{messages} messages "
            f"(generated in {gen_s:.1f}s, produced in {produce_s:.1f}s)",
            flush=True,
        )

        import asyncio

        raw_r = asyncio.run(raw(settings.topics.touchpoints, n, settings.broker.bootstrap))
        print(f"(a) raw aiokafka + orjson       {raw_r['eps']:>10,.0f} events/s", flush=True)
        naive_r = run_naive(settings.topics.touchpoints, n, settings.broker.bootstrap, args.timeout)
        print(f"(b) naive Faust, 1 write/event  {naive_r['eps']:>10,.0f} events/s", flush=True)
        broker_pid = broker.proc.pid if broker is not None and broker.proc is not None else None
        pipe_r = run_pipeline(
            settings, n, workdir / "pipeline", args.timeout, args.workers, broker_pid
        )
        print(
            f"(c) journey pipeline (RocksDB)  {pipe_r['eps']:>10,.0f} events/s "
            f"({args.workers} worker{'s' if args.workers > 1 else ''})",
            flush=True,
        )
        one_r = None
        if args.workers > 1:
            one_r = run_pipeline(single, n, workdir / "pipeline-1", args.timeout, 1, broker_pid)
            print(
                f"    the same, one worker        {one_r['eps']:>10,.0f} events/s "
                f"({one_r['identity_links_unanswered']:.0f} identity links unanswered in time)",
                flush=True,
            )
        print(
            f"identity links unanswered in time: {pipe_r['identity_links_unanswered']:.0f}",
            flush=True,
        )
        fire = latency.summary(
            latency.read_triggers(settings.broker.bootstrap, settings.topics.triggers)
        )
        if fire.get("abandonments_measured"):
            print(
                f"deadline fire delay (watermark passed -> trigger emitted, under backlog): "
                f"p50 {fire['fire_delay_p50_s']} s, p99 {fire['fire_delay_p99_s']} s, "
                f"max {fire['fire_delay_max_s']} s over {fire['abandonments_measured']} "
                f"abandonments ({fire['triggers']} triggers)",
                flush=True,
            )
            print(
                f"  from the journey's own watermark ({fire['waited_for_identity_links']} "
                f"waited for identity links to answer): "
                f"p50 {fire['fire_delay_from_journey_ready_p50_s']} s, "
                f"p99 {fire['fire_delay_from_journey_ready_p99_s']} s",
                flush=True,
            )
        result = {
            "raw_eps": round(raw_r["eps"]),
            "naive_eps": round(naive_r["eps"]),
            "pipeline_eps": round(pipe_r["eps"]),
            "pipeline_vs_naive": round(pipe_r["eps"] / naive_r["eps"], 2),
            "pipeline_vs_raw": round(pipe_r["eps"] / raw_r["eps"], 4),
            "events": n,
            "customers": args.customers,
            "partitions": args.partitions,
            "messages": messages,
            "events_per_message": round(n / messages, 2),
            "sdk_batch": args.sdk_batch,
            "fire_latency": fire,
            # Journeys that stopped waiting for an identity link's answer (30 s of
            # wall time) and settled without it: 0 unless the worker falls behind.
            "identity_links_unanswered": round(pipe_r["identity_links_unanswered"]),
            "pipeline_workers": pipe_r["workers"],
            "pipeline_applied_per_worker": pipe_r["applied_per_worker"],
            "pipeline_state_writes_per_event": round(pipe_r["state_writes"] / n, 3),
            # CPU time per event applied, of all workers and of the embedded broker.
            "pipeline_worker_cpu_us_per_event": pipe_r["worker_cpu_us_per_event"],
            "pipeline_broker_cpu_us_per_event": pipe_r["broker_cpu_us_per_event"],
            "pipeline_1worker_cpu_us_per_event": (one_r or pipe_r)["worker_cpu_us_per_event"],
            "pipeline_1worker_broker_cpu_us_per_event": (one_r or pipe_r)[
                "broker_cpu_us_per_event"
            ],
            # The same pipeline as one worker process, after (c), in the same run.
            "pipeline_1worker_eps": round((one_r or pipe_r)["eps"]),
            "pipeline_1worker_vs_naive": round((one_r or pipe_r)["eps"] / naive_r["eps"], 2),
            "pipeline_1worker_identity_links_unanswered": round(
                (one_r or pipe_r)["identity_links_unanswered"]
            ),
            "machine": (
                f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(
            f"pipeline / naive = {result['pipeline_vs_naive']}x "
            f"(one worker: {result['pipeline_1worker_vs_naive']}x), "
            f"pipeline / raw = {result['pipeline_vs_raw']}",
            flush=True,
        )
        print(
            f"CPU per event: workers {result['pipeline_worker_cpu_us_per_event']} us, "
            f"broker {result['pipeline_broker_cpu_us_per_event']} us "
            f"(one worker: {result['pipeline_1worker_cpu_us_per_event']} us, "
            f"broker {result['pipeline_1worker_broker_cpu_us_per_event']} us)",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
