"""One journey's step takes effect whole or not at all (``JourneyShell.isolated``).

The rules change states in place, so a step that fails half-way must leave the
journey as it was before it, and pass nothing on to other journeys. Driven on
the shell directly (a Faust app with the in-memory store, never started).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import faust
import pytest

from stream.app import declare_topics, faust_app
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.ingest.identity import MERGE
from stream.journey.agent import JourneyShell, register_journey
from stream.settings import load_settings

T0 = 1_700_000_000_000


def shell(tmp_path: Path, **limits: Any) -> JourneyShell:
    base = load_settings(environ={})
    settings = replace(
        base,
        worker=replace(base.worker, data_dir=str(tmp_path / "worker")),
        limits=replace(base.limits, **limits),
    )
    app: faust.App = faust_app(settings, store="memory://")
    s = register_journey(app, settings, declare_topics(app, settings))
    s._event = object()  # type: ignore[assignment]  # saves need a batch's event
    return s


def add(event_id: str, at: int, **props: Any) -> Touchpoint:
    return Touchpoint(
        event_id=event_id,
        type="add_to_cart",
        channel="web",
        timestamp=at,
        customer_id="c-1",
        properties={"sku": "S1", "price": 10.0, "quantity": 1, **props},
    )


def merge(into: str) -> Touchpoint:
    return Touchpoint(
        event_id=f"merge:{into}",
        type=MERGE,
        channel="web",
        timestamp=T0,
        anonymous_id="dev-1",
        properties={"into": into, "alias": "anon:dev-1"},
        source="journey",
    )


def test_a_failing_step_leaves_the_journey_and_the_outbox_as_they_were(tmp_path: Path) -> None:
    s = shell(tmp_path)
    assert s.isolated("c-1", lambda: s.take_in(0, "c-1", [add("a1", T0)], wm=0)) == []
    before = s.dirty["c-1"][0].to_dict()
    counts = dict(s.stage_counts[0])
    applied = s.applied

    # A merge passes the journey on, then a touchpoint the rules cannot take.
    poison = replace(add("a2", T0 + 1), timestamp="soon")  # type: ignore[arg-type]
    out = s.isolated(
        "c-1", lambda: s.take_segments(0, "c-1", [[add("a3", T0 + 2)], [merge("c-9"), poison]], 0)
    )
    assert isinstance(out, TypeError)
    assert s.dirty["c-1"][0].to_dict() == before
    assert "c-1" not in s.cache
    assert s.load("c-1").to_dict() == before  # type: ignore[union-attr]
    assert s.outbox == {}
    assert dict(s.stage_counts[0]) == counts
    assert s.applied == applied

    # The journey goes on from there.
    assert s.isolated("c-1", lambda: s.take_in(0, "c-1", [add("a4", T0 + 3)], wm=0)) == []
    assert [p.event_id for p in s.dirty["c-1"][0].pending] == ["a1", "a4"]


def test_a_state_over_its_size_limit_fails_the_step_that_grew_it(tmp_path: Path) -> None:
    s = shell(tmp_path, max_state_bytes=4096)
    assert s.isolated("c-1", lambda: s.take_in(0, "c-1", [add("a1", T0)], wm=0)) == []
    big = add("a2", T0 + 1, note="x" * 5000)
    out = s.isolated("c-1", lambda: s.take_in(0, "c-1", [big], wm=0))
    assert isinstance(out, InvalidTouchpoint) and out.limit == "state_size"
    assert [p.event_id for p in s.dirty["c-1"][0].pending] == ["a1"]


def test_saves_outside_a_step_take_effect_at_once(tmp_path: Path) -> None:
    s = shell(tmp_path)
    s.take_in(0, "c-1", [add("a1", T0)], wm=0)
    assert "c-1" in s.dirty
    with pytest.raises(InvalidTouchpoint):
        shell(tmp_path / "small", max_state_bytes=10).take_in(0, "c-1", [add("a1", T0)], wm=0)
