"""Conversion attribution of an event log, offline (pure): what ``journey report`` adds.

The oracle (:mod:`stream.journey.replay`) gives the triggers with their
deadlines and the identity links; the log gives the dispatcher's outcomes and
the purchases. Each purchase belongs to the journey its customer ended in (an
orphan's to the customer it merged into). Every key's
:class:`~stream.analytics.attribution.Attribution` takes them in and is
advanced to ``as_of``, the watermark the report is settled to: the windows it
closed are counted as the stream counts them, open ones are not yet.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream.analytics.attribution import Attribution, Conversion, Policy, purchases_in
from stream.analytics.decisions import OutcomeFact
from stream.analytics.followups import FollowupCounts
from stream.contract import Touchpoint
from stream.ingest.identity import resolve
from stream.journey.replay import Oracle


def journey_of(tp: Touchpoint, oracle: Oracle) -> str:
    """The journey ``tp`` ended in, after every identity link of the log."""
    key = resolve(tp, oracle.identity.get).journey_key
    seen = {key}
    while (state := oracle.states.get(key)) is not None and state.merged_into is not None:
        key = state.merged_into
        if key in seen:
            break
        seen.add(key)
    return key


def attribute(
    oracle: Oracle,
    events: Iterable[Touchpoint],
    outcomes: Iterable[OutcomeFact],
    as_of: int,
    policy: Policy,
) -> list[Conversion]:
    """The conversion records of the log's decided triggers whose windows ``as_of`` closed."""
    states: dict[str, Attribution] = {}

    def state(key: str) -> Attribution:
        return states.setdefault(key, Attribution(key))

    for trigger in oracle.triggers:
        state(trigger.journey_key).on_trigger(
            trigger.trigger_id, trigger.rule, trigger.deadline, policy
        )
    for o in sorted(outcomes, key=lambda o: o.at):
        state(o.journey_key).on_outcome(o.trigger_id, o.rule, o.outcome, o.at, policy)
    for tp in events:
        for bought in purchases_in(tp):
            state(journey_of(tp, oracle)).on_purchase(bought, policy)
    out: list[Conversion] = []
    for key in sorted(states):
        out.extend(states[key].advance(as_of, policy))
    return out


def counts_of(records: Iterable[Conversion], bucket_ms: int) -> FollowupCounts:
    counts = FollowupCounts(bucket_ms)
    counts.add_all(records)
    return counts
