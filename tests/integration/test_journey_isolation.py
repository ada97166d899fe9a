"""One journey's step takes effect whole or not at all (``JourneyShell.run_step``).

The rules change states in place, so a step that fails half-way must leave the
journey as it was before it, and pass nothing on to other journeys. Driven on
the shell directly (a Faust app with the in-memory store, never started).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import faust

from stream.app import faust_app
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.ingest.identity import MERGE
from stream.journey import linking
from stream.journey.agent import JourneyShell, register_journey
from stream.settings import load_settings
from stream.worker import declare_topics

T0 = 1_700_000_000_000
NOW = 1_800_000_000_000


def shell(tmp_path: Path, **limits: Any) -> JourneyShell:
    base = load_settings(environ={})
    settings = replace(
        base,
        worker=replace(base.worker, data_dir=str(tmp_path / "worker")),
        limits=replace(base.limits, **limits),
    )
    app: faust.App = faust_app(settings, store="memory://")
    s = register_journey(app, settings, declare_topics(app, settings))
    s.event = object()  # type: ignore[assignment]  # saves need a batch's event
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


def take(s: JourneyShell, *segments: list[Touchpoint]) -> Any:
    def step(state: Any) -> linking.Step:
        return linking.take_segments(state, "c-1", list(segments), 0, NOW, s.model)

    return s.run_step(0, "c-1", step)


def test_a_failing_step_leaves_the_journey_and_the_outbox_as_they_were(tmp_path: Path) -> None:
    s = shell(tmp_path)
    assert take(s, [add("a1", T0)]) == []
    before = s.store.dirty["c-1"].state.to_dict()
    counts = dict(s.stage_counts[0])
    applied = s.applied

    # A merge passes the journey on, then a touchpoint the rules cannot take.
    poison = replace(add("a2", T0 + 1), timestamp="soon")  # type: ignore[arg-type]
    out = take(s, [add("a3", T0 + 2)], [merge("c-9"), poison])
    assert isinstance(out, TypeError)
    assert s.store.dirty["c-1"].state.to_dict() == before
    assert "c-1" not in s.store.cache
    assert s.load("c-1").to_dict() == before  # type: ignore[union-attr]
    assert s.emitter.outbox == {}
    assert dict(s.stage_counts[0]) == counts
    assert s.applied == applied

    # The journey goes on from there.
    assert take(s, [add("a4", T0 + 3)]) == []
    assert [p.event_id for p in s.store.dirty["c-1"].state.pending] == ["a1", "a4"]


def test_a_state_over_its_size_limit_fails_the_step_that_grew_it(tmp_path: Path) -> None:
    s = shell(tmp_path, max_state_bytes=4096)
    assert take(s, [add("a1", T0)]) == []
    out = take(s, [add("a2", T0 + 1, note="x" * 5000)])
    assert isinstance(out, InvalidTouchpoint) and out.limit == "state_size"
    assert [p.event_id for p in s.store.dirty["c-1"].state.pending] == ["a1"]
