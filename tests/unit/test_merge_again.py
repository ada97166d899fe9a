"""An orphan journey asked to merge again answers again, so a customer never waits in vain.

A worker can die after saving an orphan journey as merged but before that
journey's ``merge_in`` left; the next owner reads the link again (not yet
committed) and ingest repeats its merge. These tests drive the journey shell's
``take_in`` directly (a Faust app with the in-memory store, never started; the
journeys live in the shell's cache), and read what it would send.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import faust

from stream.app import declare_topics, faust_app
from stream.contract import Touchpoint
from stream.ingest.identity import MERGE, resolve
from stream.journey.agent import MERGE_IN, JourneyShell, register_journey
from stream.settings import load_settings

T0 = 1_700_000_000_000


def shell(tmp_path: Path) -> JourneyShell:
    base = load_settings(environ={})
    settings = replace(base, worker=replace(base.worker, data_dir=str(tmp_path / "worker")))
    app: faust.App = faust_app(settings, store="memory://")
    shell = register_journey(app, settings, declare_topics(app, settings))
    shell._event = object()  # type: ignore[assignment]  # saves need a batch's event
    return shell


def event(event_id: str, type_: str, at: int, **ids: Any) -> Touchpoint:
    return Touchpoint(event_id=event_id, type=type_, channel="web", timestamp=at, **ids)


def sent(shell: JourneyShell, key: str) -> list[Touchpoint]:
    out = shell.outbox.pop(key, [])
    shell.dirty.clear()
    return out


def test_a_merged_orphan_sends_itself_again_and_the_customer_takes_it_once(
    tmp_path: Path,
) -> None:
    s = shell(tmp_path)
    views = [event(f"v{i}", "product_view", T0 + i, anonymous_id="dev-1") for i in range(3)]
    assert s.take_in(0, "anon:dev-1", views, wm=0) == []
    s.cache["anon:dev-1"] = s.dirty["anon:dev-1"][0]

    login = event("login", "identify", T0 + 10, anonymous_id="dev-1", customer_id="c-1")
    ((orphan, merge),) = resolve(login, {"dev-1": "c-1"}.get).merges  # link already on record
    assert (orphan, merge.type) == ("anon:dev-1", MERGE)

    s.take_in(0, orphan, [merge], wm=0)
    (first,) = sent(s, "c-1")
    assert first.type == MERGE_IN and len(first.properties["state"]["pending"]) == 3
    assert s.load(orphan).merged_into == "c-1"  # type: ignore[union-attr]

    # The same merge again (read again after a crash): the journey goes again, as it went.
    s.take_in(0, orphan, [merge], wm=0)
    (again,) = sent(s, "c-1")
    assert again.type == MERGE_IN
    assert again.properties == first.properties

    # The customer's journey, waiting for the link's answer, takes the orphan in once.
    s.take_in(1, "c-1", [login], wm=0)
    customer = s.dirty["c-1"][0]
    assert customer.awaiting == {"dev-1": customer.awaiting["dev-1"]}
    s.take_in(1, "c-1", [again, first], wm=0)
    customer = s.dirty["c-1"][0]
    assert customer.awaiting == {}
    assert sorted(tp.event_id for tp in customer.pending) == ["login", "v0", "v1", "v2"]
    assert customer.merged_from == ["dev-1"]


def test_a_merge_into_another_customer_is_acknowledged(tmp_path: Path) -> None:
    s = shell(tmp_path)
    s.take_in(0, "anon:dev-2", [event("v", "page_view", T0, anonymous_id="dev-2")], wm=0)
    s.cache["anon:dev-2"] = s.dirty["anon:dev-2"][0]
    one = event("a", "identify", T0 + 1, anonymous_id="dev-2", customer_id="c-1")
    two = event("b", "identify", T0 + 2, anonymous_id="dev-2", customer_id="c-2")
    ((orphan, to_one),) = resolve(one, {}.get).merges
    ((_, to_two),) = resolve(two, {"dev-2": "c-1"}.get).merges
    s.take_in(0, orphan, [to_one], wm=0)
    assert [m.properties["state"] is not None for m in sent(s, "c-1")] == [True]
    s.take_in(0, orphan, [to_two], wm=0)
    (ack,) = sent(s, "c-2")
    assert (ack.type, ack.properties["alias"], ack.properties["state"]) == (MERGE_IN, "dev-2", None)
