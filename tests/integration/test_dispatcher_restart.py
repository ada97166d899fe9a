"""A restarted dispatcher picks up its dead predecessor's in-flight triggers at once."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.embedded import SmtpCatcher, free_port
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import wait_for
from tests.integration.test_dispatcher import Kafka, by_trigger, make_trigger, outcomes
from tests.procs import Dispatcher, dispatch_settings, http_get

pytestmark = pytest.mark.slow


def with_instance(settings: Settings, instance: str, **dispatch: Any) -> Settings:
    return replace(
        settings,
        dispatch=replace(settings.dispatch, instance_id=instance, instance_lease_s=2.0, **dispatch),
    )


def test_killed_dispatchers_claim_is_taken_over_by_its_restart(
    settings: Settings, redis_server: Any, tmp_path: Path
) -> None:
    # The relay is down at first: the trigger stays claimed while its send is retried.
    relay_port = free_port()
    env = with_instance(
        dispatch_settings(settings, redis_server.url, relay_port),
        "dispatcher-a",
        max_attempts=5,
        retry_backoff_s=30.0,
        retry_backoff_max_s=30.0,
        claim_ttl_s=600.0,
    )
    ensure_topics(env)
    kafka = Kafka(env)
    client = redis.Redis.from_url(redis_server.url)
    first = Dispatcher(env, tmp_path / "first.log").start()
    catcher: SmtpCatcher | None = None
    second: Dispatcher | None = None
    try:
        first.wait_ready()
        trigger = make_trigger("c-restart")
        kafka.trigger(trigger)
        claim_key = f"{env.dispatch.key_prefix}claim:{trigger.trigger_id}"
        claim = wait_for(lambda: client.get(claim_key), lambda v: v is not None, timeout_s=60)
        assert claim.startswith(b"inflight:dispatcher-a/"), claim
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        catcher = SmtpCatcher(tmp_path / "mail", port=relay_port).start()
        second = Dispatcher(env, tmp_path / "second.log").start()
        # Sent well before the 600 s claim would have run out: taken over, once.
        mail = wait_for(catcher.received, lambda m: len(m) >= 1, timeout_s=60)
        assert [m.rcpt_tos for m in mail] == [("c-restart@example.com",)]
        assert "taking over the claim" in second.log_path.read_text()
        records = wait_for(
            lambda: by_trigger(outcomes(env)), lambda o: "sent" in o.get(trigger.trigger_id, [])
        )
        assert records[trigger.trigger_id].count("sent") == 1
    finally:
        for d in (second, first):
            if d is not None:
                d.stop()
        if catcher is not None:
            catcher.stop()
        kafka.close()
        client.close()


def test_another_instances_claim_waits_and_a_duplicate_instance_never_gets_ready(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    env = with_instance(dispatch_settings(settings, redis_server.url, smtp.port), "dispatcher-b")
    ensure_topics(env)
    kafka = Kafka(env)
    client = redis.Redis.from_url(redis_server.url)
    first = Dispatcher(env, tmp_path / "first.log").start()
    twin: Dispatcher | None = None
    try:
        first.wait_ready()
        # A claim held by a live process of another instance is not ours to take.
        foreign = make_trigger("c-foreign")
        key = f"{env.dispatch.key_prefix}claim:{foreign.trigger_id}"
        client.set(key, b"inflight:dispatcher-z/0123456789ab/x", px=600_000)
        kafka.trigger(foreign)
        mine = make_trigger("c-mine")
        kafka.trigger(mine)
        wait_for(smtp.received, lambda m: len(m) >= 1, timeout_s=60)
        assert [m.rcpt_tos for m in smtp.received()] == [("c-mine@example.com",)]
        assert client.get(key) == b"inflight:dispatcher-z/0123456789ab/x"
        # A second live process with the same instance id never holds the lease.
        twin_env = replace(env, dispatch=replace(env.dispatch, web_port=free_port()))
        twin = Dispatcher(twin_env, tmp_path / "twin.log").start()
        wait_for(
            lambda: twin.log_path.read_text(),
            lambda text: "another dispatcher runs as instance 'dispatcher-b'" in text,
            timeout_s=60,
        )
        status, body = http_get(f"{twin.url}/ready")
        assert status == 503 and body["lease_held"] is False, body
        assert http_get(f"{first.url}/ready")[0] == 200
    finally:
        if twin is not None:
            twin.stop()
        first.stop()
        kafka.close()
        client.close()
