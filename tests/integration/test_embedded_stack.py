"""The embedded stack itself: broker, Redis, SMTP catcher, clean stop, and Faust on top."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedStack,
    SmtpCatcher,
    create_topics,
    wait_until,
)
from stream.faust_ext.recovery import fetched_end_offsets
from stream.topics import read_topic


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# --- broker -----------------------------------------------------------------


def test_broker_answers_and_has_kafka_urls(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"


async def test_thousand_messages_through_four_partitions(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"embedded-roundtrip-{unique}"
    create_topics(broker.bootstrap, {topic: 4})
    create_topics(broker.bootstrap, {topic: 4})  # already there: not an error

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        assert producer.partitions_for(topic) == {0, 1, 2, 3}
        futures = [
            producer.send(topic, key=b"k%d" % (i % 37), value=b"%d" % i) for i in range(1000)
        ]
        producer.flush()
        sent = [f.get(timeout=10) for f in futures]
    finally:
        producer.close()
    assert {m.partition for m in sent} == {0, 1, 2, 3}

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [AioTopicPartition(topic, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + 20
        while len(got) < 1000:
            assert time.monotonic() < deadline, f"read {len(got)} of 1000"
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                got.extend((tp.partition, r.key or b"", r.value or b"") for r in records)
    finally:
        await consumer.stop()

    assert sorted(int(v) for _, _, v in got) == list(range(1000))
    partition_of_key: dict[bytes, set[int]] = {}
    for partition, key, _ in got:
        partition_of_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in partition_of_key.values())


def test_end_offsets_are_unreliable_but_fetch_highwater_is_exact(
    broker: EmbeddedBroker, unique: str
) -> None:
    """Characterises Tansu 0.6 (memory storage): ListOffsets(latest) answers the
    base offset of the last record *batch* + 1, not the last offset + 1.

    Anything deciding "caught up" from ``end_offsets`` (lag, Faust's recovery
    highwater) under-counts after multi-record batches; the high watermark in
    fetch responses is right.
    """
    topic = f"embedded-offsets-{unique}"
    create_topics(broker.bootstrap, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=50)
    try:
        futures = [producer.send(topic, value=b"x") for _ in range(10)]
        producer.flush()
        assert [f.get(timeout=10).offset for f in futures] == list(range(10))
    finally:
        producer.close()

    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False
    )
    try:
        assert consumer.end_offsets([tp])[tp] <= 10
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        seen: list[int] = []

        def read_all() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend(r.offset for r in records)
            return len(seen) >= 10

        wait_until(read_all, 10, 0, "all ten records read")
        assert seen == list(range(10))
        assert consumer.highwater(tp) == 10
    finally:
        consumer.close()
    # What the embedded stack's table recovery reads to (see stream.faust_ext.recovery).
    reported = {AioTopicPartition(topic, 0): 1}
    assert asyncio.run(fetched_end_offsets(broker.bootstrap, reported)) == {
        AioTopicPartition(topic, 0): 10
    }


def test_read_topic_ends_while_the_topic_is_still_written(
    broker: EmbeddedBroker, unique: str
) -> None:
    """``read_topic`` returns what was on the topic when called, batches included,
    and does not chase a writer that never stops (the worker's event-time marks
    go to ``touchpoints.resolved`` every quarter second; chasing them hung a test
    for its whole 300 s timeout)."""
    topic = f"embedded-read-{unique}"
    create_topics(broker.bootstrap, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=20)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            producer.send(topic, value=b"later").get(timeout=10)
            stop.wait(0.05)

    try:
        for i in range(50):
            producer.send(topic, value=b"before", partition=i % 2)
        producer.flush()
        writer = threading.Thread(target=keep_writing, daemon=True)
        writer.start()
        records = read_topic(broker.bootstrap, topic, timeout_s=20)
        assert writer.is_alive()  # the topic was written to all along
        assert [r.value for r in records].count(b"before") == 50
    finally:
        stop.set()
        producer.close()


def test_broker_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        b = EmbeddedBroker(port=taken.getsockname()[1], log_path=tmp_path / "broker.log")
        with pytest.raises(RuntimeError, match="AddrInUse"):
            b.start(timeout=10)
        assert not b.running


# --- redis ------------------------------------------------------------------


def test_redis_ping_set_get(redis_server: EmbeddedRedis, unique: str) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        client.set(f"k-{unique}", "v")
        assert client.get(f"k-{unique}") == b"v"
        # Nothing is persisted: no RDB snapshots, no AOF.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


# --- smtp -------------------------------------------------------------------


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpCatcher]:
    catcher = SmtpCatcher(tmp_path / "mail").start()
    try:
        yield catcher
    finally:
        catcher.stop()


def send_mail(catcher: SmtpCatcher, subject: str, msgid: str, to: str = "ann@example.com") -> None:
    msg = EmailMessage()
    msg["From"] = "journey@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid
    msg.set_content("Your basket misses you.\n")
    with smtplib.SMTP(catcher.host, catcher.port, timeout=10) as client:
        client.send_message(msg)


def test_smtp_catcher_keeps_and_writes_each_message(smtp: SmtpCatcher) -> None:
    send_mail(smtp, "Come back, Ann", "<abandon-1@journey.test>")
    send_mail(smtp, "Still there? ✓", "<weird/../id 2@journey.test>", to="bob@example.com")
    wait_until(lambda: len(smtp.messages) == 2, 10, what="two messages caught")

    first, second = smtp.received()
    assert first.message["Subject"] == "Come back, Ann"
    assert first.mail_from == "journey@example.com"
    assert first.rcpt_tos == ("ann@example.com",)
    assert second.message["Subject"] == "Still there? ✓"
    assert smtp.envelopes[1] == {"from": "journey@example.com", "to": ["bob@example.com"]}

    files = sorted(p.name for p in smtp.maildir.iterdir())
    assert files == [first.path.name, second.path.name]  # no temporary files left
    assert files[0] == "000001-abandon-1@journey.test.eml"
    assert re.fullmatch(r"000002-[A-Za-z0-9@._+-]+\.eml", files[1])
    assert first.path.parent == smtp.maildir
    assert b"Your basket misses you." in first.path.read_bytes()
    assert first.message.get_content().strip() == "Your basket misses you."


# --- the whole stack, and stopping it ----------------------------------------


def test_stack_env_and_clean_stop(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path / "stack") as stack:
        assert stack.redis is not None and stack.smtp is not None
        env = stack.env()
        assert env == {
            "JOURNEY_BROKER_URL": stack.broker.url,
            "JOURNEY_WORKER_RECOVERY_CONSISTENCY_CHECK": "false",
            "JOURNEY_WORKER_API_TOKENS": f"{stack.api_token}=admin",
            "JOURNEY_SECURITY_ALLOW_DEFAULT_SECRETS": "true",
            "JOURNEY_REDIS_URL": stack.redis.url,
            "JOURNEY_SMTP_HOST": "127.0.0.1",
            "JOURNEY_SMTP_PORT": str(stack.smtp.port),
        }
        assert len(stack.api_token) >= 20
        procs = [stack.broker.proc, stack.redis.proc]
        ports = [stack.broker.port, stack.redis.port, stack.smtp.port]
        assert all(p is not None and p.poll() is None for p in procs)
        assert not any(port_is_free(port) for port in ports)
    assert all(p is not None and p.poll() is not None for p in procs)
    assert all(port_is_free(port) for port in ports)
    assert not stack.smtp.running
    stack.stop()  # idempotent


def test_stack_stop_carries_on_past_a_failing_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = EmbeddedStack(tmp_path / "stack", with_smtp=False).start()
    assert stack.redis is not None

    def broken_stop(timeout: float = 10.0) -> None:
        raise OSError("redis would not stop")

    real_stop = stack.redis.stop
    monkeypatch.setattr(stack.redis, "stop", broken_stop)
    with pytest.raises(OSError, match="would not stop"):
        stack.stop()
    assert stack.broker.proc is not None and stack.broker.proc.poll() is not None
    real_stop()
    assert stack.redis.proc is not None and stack.redis.proc.poll() is not None
    assert stack.env() == {
        "JOURNEY_BROKER_URL": stack.broker.url,
        "JOURNEY_WORKER_RECOVERY_CONSISTENCY_CHECK": "false",
        "JOURNEY_WORKER_API_TOKENS": f"{stack.api_token}=admin",
        "JOURNEY_SECURITY_ALLOW_DEFAULT_SECRETS": "true",
        "JOURNEY_REDIS_URL": stack.redis.url,
    }


CHILD_OWNER = """
import sys
from pathlib import Path
from stream.embedded import EmbeddedBroker, EmbeddedRedis
work = Path(sys.argv[1])
b = EmbeddedBroker(log_path=work / "broker.log").start()
r = EmbeddedRedis(dir=work / "redis").start()
print(b.proc.pid, r.proc.pid, b.port, r.port, flush=True)
sys.stdin.read()  # hold on until killed
"""


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", CHILD_OWNER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().decode()
        assert line, "the owner process died before starting its children"
        broker_pid, redis_pid, broker_port, redis_port = map(int, line.split())
        assert not pid_gone(broker_pid) and not pid_gone(redis_pid)
        owner.kill()  # no atexit, no cleanup: only PR_SET_PDEATHSIG can stop the children
        owner.wait(10)
        wait_until(lambda: pid_gone(broker_pid) and pid_gone(redis_pid), 15, what="children gone")
        wait_until(lambda: port_is_free(broker_port) and port_is_free(redis_port), 10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# --- Faust on the embedded broker --------------------------------------------

FAUST_APP = """
import os
import faust

app = faust.App(
    os.environ["FX_APP_ID"],
    broker=os.environ["FX_BROKER"],
    store=os.environ["FX_STORE"],
    datadir=os.environ["FX_DATADIR"],
    topic_partitions=4,
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=6.0,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    # Tansu under-reports end offsets (see test_end_offsets_are_unreliable...), so a
    # RocksDB offset persisted from a produce ack can exceed the changelog
    # "highwater" on restart; the check would then refuse to start the worker.
    recovery_consistency_check=False,
)
src = app.topic(os.environ["FX_IN"], partitions=4, key_serializer="raw", value_serializer="raw")
dst = app.topic(os.environ["FX_OUT"], partitions=4, key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=4, key_type=str, value_type=int)


@app.agent(src)
async def forward(stream):
    async for event in stream.events():
        key = event.key.decode()
        counts[key] += 1
        await dst.send(key=event.key, value=event.value + b"|%d" % counts[key])


if __name__ == "__main__":
    app.main()
"""

LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_time(log: str, needle: str) -> datetime:
    for line in log.splitlines():
        if needle in line and (m := LOG_TIME.match(line)):
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"{needle!r} not in the worker log")


class FaustWorker:
    def __init__(self, module_dir: Path, module: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "worker", "-l", "info", "--without-web"],
                env={**os.environ, **env, "PYTHONPATH": str(module_dir)},
                cwd=module_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> float:
        def ready() -> bool:
            assert self.proc.poll() is None, f"worker exited:\n{self.text()[-4000:]}"
            return "[^Worker]: Ready" in self.text()

        wait_until(ready, timeout, what="Faust worker ready")
        return time.monotonic() - self.started

    def join_seconds(self) -> float:
        """First '(Re-)joining group' to the last 'Joined group' before ready."""
        text = self.text().split("[^Worker]: Ready")[0]
        joined = [line for line in text.splitlines() if "Joined group" in line]
        start = log_time(text, "(Re-)joining group")
        end = log_time(joined[-1], "Joined group")
        return (end - start).total_seconds()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def read_values(bootstrap: str, topic: str, at_least: int, timeout: float) -> list[bytes]:
    """Values on ``topic`` once there are ``at_least`` of them (fetch-based, not end_offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        values: list[bytes] = []

        def enough() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
            return len(values) >= at_least

        wait_until(enough, timeout, 0, f"{at_least} records on {topic}")
        return values
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, numbers: range) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in numbers:
            producer.send(topic, key=b"k%d" % (i % 10), value=b"v%d" % i)
        producer.flush()
    finally:
        producer.close()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_faust_worker_joins_and_forwards(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    store: str,
    record_property: Callable[[str, object], None],
) -> None:
    module = f"fx_{unique}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(FAUST_APP))
    src, dst = f"fx-in-{unique}", f"fx-out-{unique}"
    create_topics(broker.bootstrap, {src: 4, dst: 4})
    env = {
        "FX_APP_ID": f"fx-{unique}",
        "FX_BROKER": broker.url,
        "FX_STORE": store,
        "FX_DATADIR": str(tmp_path / "data"),
        "FX_IN": src,
        "FX_OUT": dst,
    }

    worker = FaustWorker(tmp_path, module, env, tmp_path / "worker-1.log")
    try:
        ready_s = worker.wait_ready(60)
        join_s = worker.join_seconds()
        produce(broker.bootstrap, src, range(100))
        values = read_values(broker.bootstrap, dst, 100, 30)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.text()[-4000:]
    assert sorted(v.split(b"|")[0] for v in values) == sorted(b"v%d" % i for i in range(100))
    assert max(int(v.split(b"|")[1]) for v in values) == 10
    record_property("faust_join_s", join_s)
    record_property("faust_ready_s", ready_s)
    print(f"\n{store}: group joined in {join_s:.2f}s, worker ready {ready_s:.2f}s after spawn")
    assert join_s < 10

    if store != "rocksdb://":
        return
    # A restart keeps the table: state comes back from RocksDB (plus changelog).
    again = FaustWorker(tmp_path, module, env, tmp_path / "worker-2.log")
    try:
        restart_s = again.wait_ready(60)
        produce(broker.bootstrap, src, range(100, 200))
        values = read_values(broker.bootstrap, dst, 200, 30)
    finally:
        again.stop()
    assert again.proc.returncode == 0, again.text()[-4000:]
    assert len(values) == 200  # nothing reprocessed: committed offsets were honoured
    assert max(int(v.split(b"|")[1]) for v in values) == 20
    record_property("faust_restart_ready_s", restart_s)
    print(f"{store}: restarted worker ready {restart_s:.2f}s after spawn")
