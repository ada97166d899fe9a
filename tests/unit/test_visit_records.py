"""``journey.visits`` records: what the journey agent writes, the analytics agent reads back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.journey import visit_records as records
from stream.journey.visits import (
    NAME_CHARS,
    VisitClosed,
    VisitEffect,
    VisitOpened,
    VisitTouched,
)

T0 = 1_767_225_600_000
names = st.text(min_size=0, max_size=NAME_CHARS)
stages = st.sampled_from(["awareness", "consideration", "decision", "purchase"])
keys = st.text(min_size=1, max_size=40)
times = st.integers(min_value=0, max_value=2**40)


@st.composite
def effects(draw: st.DrawFn) -> VisitEffect:
    key, stage, entered, segment = draw(keys), draw(stages), draw(times), draw(names)
    kind = draw(st.sampled_from(["opened", "touched", "closed"]))
    if kind == "opened":
        return VisitOpened(key, stage, entered, segment, draw(st.booleans()))
    if kind == "touched":
        return VisitTouched(key, stage, entered, segment, draw(names), entered + draw(times))
    outcome = draw(st.sampled_from(["advanced", "dropped", "merged"]))
    pairs = draw(st.lists(st.tuples(names, names), max_size=5, unique=True))
    return VisitClosed(
        journey_key=key,
        stage=stage,
        entered_at=entered,
        ended_at=entered + draw(times),
        outcome=outcome,
        to_stage="purchase" if outcome == "advanced" else draw(st.none() | stages),
        cause=draw(st.text(max_size=30)),
        segment=segment,
        touchpoints=tuple(sorted(pairs)),
    )


@given(keys, st.integers(min_value=0, max_value=2**40), st.lists(effects(), max_size=8))
def test_a_record_decodes_to_the_effects_it_was_made_of(
    key: str, seq: int, visits: list[VisitEffect]
) -> None:
    got = records.decode(records.encode(key, seq, visits))
    assert got == records.VisitRecord(key, seq, tuple(visits))


def test_an_erasure_decodes_as_one() -> None:
    assert records.decode(records.encode_erase("c-1")) == records.VisitRecord("c-1", 0, (), True)


def test_fresh_skips_the_effects_already_counted() -> None:
    visits = [
        VisitOpened("c-1", "awareness", T0, "ios", True),
        VisitTouched("c-1", "awareness", T0, "ios", "page_view", T0 + 1),
        VisitClosed("c-1", "awareness", T0, T0 + 5, "advanced", "consideration", "e2", "ios"),
    ]
    record = records.decode(records.encode("c-1", 10, visits))
    assert records.fresh(record, 0) == tuple(visits)  # a gap: counted as they come
    assert records.fresh(record, 10) == tuple(visits)
    assert records.fresh(record, 12) == tuple(visits[2:])
    assert records.fresh(record, 13) == ()
    assert records.fresh(record, 99) == ()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\xff\x00", "not JSON"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"journey": ""}', "length >= 1"),
        (b'{"journey": "c", "seq": -1}', "$.seq"),
        (b'{"journey": "c", "seq": 1e300}', "$.seq"),
        (b'{"journey": "c", "surprise": 1}', "unknown field"),
        (b'{"journey": "c", "visits": [{"kind": "nope"}]}', "$.visits[0].kind"),
        (
            b'{"journey": "c", "visits": [{"kind": "opened", "journey_key": "c", '
            b'"stage": "s", "entered_at": 1, "segment": "' + b"x" * 65 + b'", "first": true}]}',
            "$.visits[0].segment",
        ),
        (
            b'{"journey": "c", "visits": [{"kind": "closed", "journey_key": "c", "stage": "s", '
            b'"entered_at": 9, "ended_at": 1, "outcome": "dropped", "to": null, "cause": "", '
            b'"segment": "", "touchpoints": []}]}',
            "ends before it begins",
        ),
        (
            b'{"journey": "c", "visits": [{"kind": "closed", "journey_key": "c", "stage": "s", '
            b'"entered_at": 1, "ended_at": 2, "outcome": "advanced", "to": null, "cause": "", '
            b'"segment": "", "touchpoints": []}]}',
            "names the stage",
        ),
        (b'{"journey": "c", "erase": true, "visits": [{"kind": "x"}]}', "$.visits[0].kind"),
        (b'{"journey": "c", "visits": [' + b"1," * 200_000 + b"1]}", "bytes, over"),
    ],
)
def test_bad_records_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(records.BadRecord, match=None) as caught:
        records.decode(raw)
    assert reason in str(caught.value)
