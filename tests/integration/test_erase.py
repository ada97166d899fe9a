"""Erasing a customer (GDPR art. 17) and exporting what is held on one (art. 15).

Real broker, Redis and SMTP server; workers and the dispatcher run as child
processes. An erased journey must stay erased through a kill -9, a wiped
store (restored from the changelogs) and a worker paused while another
erased it; the dispatcher must not send a trigger of the erased journey.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream import simulator
from stream.dispatch.facts import digest
from stream.embedded import SmtpCatcher
from stream.settings import Settings, to_environ
from stream.topics import ensure_topics
from tests.helpers import REPO, read_topic, wait_for
from tests.integration.test_abandonment_stream import event, shopper
from tests.integration.test_followups import outcomes
from tests.integration.test_scale_out import owned, with_data_dir
from tests.procs import Dispatcher, Worker, dispatch_settings

MIN = 60_000

pytestmark = pytest.mark.slow


def erasable_shopper(name: str, now: int) -> list[dict[str, Any]]:
    """Anonymous browsing, then a login (email, loyalty card) and a cart left 90 min ago."""
    browse = event(
        f"{name}-browse",
        "page_view",
        now - 100 * MIN,
        anonymous_id=f"anon-{name}",
        properties={"url": "/coats"},
    )
    login = event(
        f"{name}-login",
        "identify",
        now - 98 * MIN,
        anonymous_id=f"anon-{name}",
        customer_id=name,
        properties={},
    )
    return [browse, login, *shopper(name, now, added_ago_min=90)]


def journey_of(worker: Worker, key: str) -> tuple[int, Any]:
    return worker.api(f"/customers/{key}/journey")


def triggers_for(settings: Settings, key: str) -> list[dict[str, Any]]:
    records = read_topic(settings.broker.bootstrap, settings.topics.triggers, timeout_s=10)
    return [t for t in map(orjson.loads, (r.value for r in records)) if t["journey_key"] == key]


def journey_forget(settings: Settings, key: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "forget", key],
        cwd=REPO,
        env={**os.environ, **to_environ(settings)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    return dict(orjson.loads(out.stdout))


def redis_mentions(client: redis.Redis, prefix: str, needle: bytes) -> list[str]:
    """Keys under ``prefix`` whose name or value mentions ``needle``."""
    found = []
    for key in client.scan_iter(match=f"{prefix}*"):
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"hash":
            values = [k + v for k, v in client.hgetall(key).items()]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = list(client.zrange(key, 0, -1))
        else:
            values = []
        if needle in key or any(needle in v for v in values):
            found.append(key.decode())
    return found


def test_an_erased_customer_stays_erased_through_kill_and_wiped_store_and_is_never_mailed(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    s = dispatch_settings(settings, redis_server.url, smtp.port)
    ensure_topics(s)
    now = int(time.time() * 1000)
    events = erasable_shopper("eve", now) + shopper("ann", now, added_ago_min=90)
    simulator.produce(s, sorted(events, key=lambda e: e["timestamp"]), pack_sessions=False)
    data = tmp_path / "worker-data"
    worker = Worker(with_data_dir(s, data), tmp_path / "worker.log")
    dispatcher = Dispatcher(s, tmp_path / "dispatcher.log")
    client = redis.Redis.from_url(redis_server.url)
    prefix = s.dispatch.key_prefix
    try:
        worker.start().wait_ready()
        # Eve's cart trigger is waiting in journey.triggers: no dispatcher runs yet.
        wait_for(lambda: triggers_for(s, "eve"), lambda t: len(t) >= 1, timeout_s=90)
        status, held = worker.api("/customers/eve/export")
        assert status == 200, held
        assert held["journey"]["emails"] == ["eve@example.com"]
        assert {"anon-eve", "email:eve@example.com", "loyalty:L-eve"} <= set(held["aliases"])
        assert held["dispatcher"]["erased_at"] is None

        status, body = worker.api("/customers/eve", method="DELETE")
        assert status == 202, body
        wait_for(lambda: journey_of(worker, "eve")[0], lambda st: st == 404, timeout_s=60)
        assert journey_of(worker, "ann")[0] == 200

        # kill -9, then restart on the same store.
        worker.kill()
        worker = Worker(with_data_dir(s, data), tmp_path / "worker-2.log").start()
        worker.wait_ready()
        assert journey_of(worker, "eve")[0] == 404
        assert journey_of(worker, "ann")[0] == 200

        # A wiped store restores from the changelogs: still erased.
        worker.kill()
        shutil.rmtree(data)
        worker = Worker(with_data_dir(s, data), tmp_path / "worker-3.log").start()
        worker.wait_ready()
        assert journey_of(worker, "ann")[0] == 200
        assert journey_of(worker, "eve")[0] == 404
        assert journey_of(worker, "anon:anon-eve")[0] == 404

        # Eve's loyalty card is no longer linked to her: a later in-store sale is
        # a new, anonymous journey of the card.
        sale = event(
            "eve-pos-later",
            "pos_purchase",
            int(time.time() * 1000),
            channel="pos",
            properties={"loyalty_id": "L-eve", "store_id": "ST-1", "order_id": "R-9", "value": 5.0},
        )
        simulator.produce(s, [sale], pack_sessions=False)
        status, card = wait_for(
            lambda: journey_of(worker, "loyalty:L-eve"), lambda r: r[0] == 200, timeout_s=60
        )
        assert card.get("merged_into") is None, card
        assert journey_of(worker, "eve")[0] == 404

        # The dispatcher starts: Ann is mailed, Eve's trigger ends erased.
        dispatcher.start().wait_ready()
        eve_ids = {t["trigger_id"] for t in triggers_for(s, "eve")}
        wait_for(
            lambda: {o["trigger_id"]: o["outcome"] for o in outcomes(s)},
            lambda got: all(got.get(tid) == "erased" for tid in eve_ids),
            timeout_s=90,
        )
        mails = wait_for(smtp.received, lambda m: len(m) >= 1, timeout_s=60)
        assert [m.rcpt_tos for m in mails] == [("ann@example.com",)]
        # Only the card's new journey (its in-store sale after the erase) is known.
        assert redis_mentions(client, prefix, b"eve") == [f"{prefix}signals:loyalty:L-eve"]
        assert client.exists(f"{prefix}erased:{digest('eve')}")
        status, held = worker.api("/customers/eve/export")
        assert status == 200, held
        assert held["journey"] is None and held["aliases"] == []
        assert held["dispatcher"]["erased_at"] is not None
        assert held["dispatcher"]["signals"] == {} and held["dispatcher"]["scheduled"] == []
    finally:
        dispatcher.stop()
        worker.stop()
        client.close()


def test_a_worker_paused_through_an_erase_does_not_bring_the_journey_back(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    now = int(time.time() * 1000)
    events = [e for name in ("eve", "ann", "bob", "cid") for e in erasable_shopper(name, now)]
    simulator.produce(settings, sorted(events, key=lambda e: e["timestamp"]), pack_sessions=False)
    first = Worker(with_data_dir(settings, tmp_path / "w1"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(settings, tmp_path / "w2"), tmp_path / "worker-2.log")
    resolved = settings.topics.resolved
    paused = False
    try:
        first.start().wait_ready()
        wait_for(lambda: journey_of(first, "eve")[0], lambda st: st == 200, timeout_s=90)
        second.start().wait_ready()
        wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: bool(o[0]) and bool(o[1]),
            timeout_s=90,
            every_s=0.2,
        )
        # Pause whichever worker holds Eve's journey, erase while it sleeps.
        eve_partition = journey_forget_partition(settings)
        holder, other = (
            (first, second) if eve_partition in owned(first, resolved) else (second, first)
        )
        assert holder.proc is not None
        holder.proc.send_signal(signal.SIGSTOP)
        paused = True
        wait_for(
            lambda: owned(other, resolved),
            lambda o: o == set(range(settings.topics.partitions)),
            timeout_s=60,
            every_s=0.5,
        )
        sent = journey_forget(settings, "eve")
        assert sent["partition"] == eve_partition
        wait_for(lambda: journey_of(other, "eve")[0], lambda st: st == 404, timeout_s=60)
        # The paused worker wakes holding Eve's old state, then gets her back.
        holder.proc.send_signal(signal.SIGCONT)
        paused = False
        wait_for(
            lambda: (owned(holder, resolved), owned(other, resolved)),
            lambda o: bool(o[0]) and bool(o[1]) and not (o[0] & o[1]),
            timeout_s=120,
            every_s=0.5,
        )
        assert other.stop() == 0
        wait_for(
            lambda: owned(holder, resolved),
            lambda o: o == set(range(settings.topics.partitions)),
            timeout_s=90,
            every_s=0.5,
        )
        assert journey_of(holder, "eve")[0] == 404
        assert journey_of(holder, "ann")[0] == 200
    finally:
        if paused and first.proc is not None and second.proc is not None:
            for w in (first, second):
                if w.alive():
                    w.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        second.stop()
        first.stop()


def journey_forget_partition(settings: Settings) -> int:
    from stream.dispatch.signals import partition_for

    return partition_for("eve", settings.topics.partitions)
