"""The identity-link protocol between journeys, as pure functions. No I/O, no clock.

When a touchpoint shows an alias (device, loyalty card, email) together with a
customer id, ingest links them (``stream.ingest.identity``) and sends the
alias's orphan journey a ``merge`` message. The orphan answers with a
``merge_in`` to the customer's journey: its state, or only an acknowledgement
when it has none. Until every link it made has answered (at most
``LINK_ACK_TIMEOUT_MS`` of wall time), the customer's journey settles nothing
and fires no deadline, so a purchase recorded under a newly linked loyalty card
still cancels the cart email.

The stream's journey agent and the offline oracle (``journey replay``) both run
:func:`take_in` and :func:`check`; the caller owns I/O (loading and saving the
state, sending the forwards) and passes the wall clock in as ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from stream import contract
from stream.contract import Touchpoint
from stream.ingest.identity import MERGE, orphan_key
from stream.journey import rules
from stream.journey.rules import Effect
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState
from stream.triggers.trigger import Trigger

MERGE_IN = "merge_in"
#: A request to erase a journey (``journey forget``, ``DELETE /customers/{id}``).
ERASE = "erase"
#: How long a journey waits for an identity link's answer before settling anyway.
LINK_ACK_TIMEOUT_MS = 30_000


@dataclass
class Step:
    """What taking touchpoints into one journey (or settling it) came to."""

    #: The journey's state after the step (None: there is no journey).
    state: JourneyState | None
    #: Whether the state changed and must be written.
    save: bool = False
    effects: list[Effect] = field(default_factory=list)
    #: Touchpoints passed on to other journeys: (journey key, touchpoints), in order.
    forwards: list[tuple[str, list[Touchpoint]]] = field(default_factory=list)
    #: Touchpoints taken into the journey, and those of them that came late.
    applied: int = 0
    late: int = 0
    #: The journey merged into a customer's in this step.
    merged: bool = False
    #: Links given up unanswered in this step.
    unanswered: list[str] = field(default_factory=list)
    #: Wall ms at which a journey held for its links is due again (None: not held).
    held_until: int | None = None
    #: The journey is erased: its state goes (an erasure marker is written instead).
    erase: bool = False
    #: Aliases whose identity records go with an erased journey.
    unlinks: list[str] = field(default_factory=list)


def linked_aliases(tp: Touchpoint) -> list[str]:
    """Aliases ingest links to ``tp.customer_id`` (each answered by a ``merge_in``)."""
    key = tp.routing_key
    out = [key] if key != tp.customer_id else []
    out.extend(a for a in contract.alias_ids(tp) if a != key)
    return out


def held(state: JourneyState, now: int) -> bool:
    """Whether settling waits for identity links still on their way (see module doc)."""
    return any(now - since <= LINK_ACK_TIMEOUT_MS for since in state.awaiting.values())


def held_until(state: JourneyState) -> int:
    """When the last of the journey's awaited links is given up."""
    return max(state.awaiting.values()) + LINK_ACK_TIMEOUT_MS + 1


def drop_expired_links(state: JourneyState, now: int) -> list[str]:
    """Forget links that never answered; returns their aliases (the caller saves)."""
    gone = [alias for alias, since in state.awaiting.items() if now - since > LINK_ACK_TIMEOUT_MS]
    for alias in gone:
        del state.awaiting[alias]
    return gone


def identity_ready(effect: Effect, at: int) -> Effect:
    """Tag a trigger released by identity links answering at ``at`` (wall ms)."""
    if isinstance(effect, Trigger):
        return replace(effect, extra={**effect.extra, "identity_ready_at": at})
    return effect


def merge_in(state: JourneyState | None, into: str, alias: str, at: int) -> Touchpoint:
    """The answer of an orphan journey to a merge (with None, only the acknowledgement)."""
    return contract.internal_touchpoint(
        MERGE_IN,
        f"merge_in:{alias}:{into}",
        at,
        anonymous_id=alias,
        properties={"alias": alias, "state": None if state is None else state.to_dict()},
    )


def _answer_again(state: JourneyState, tp: Touchpoint) -> tuple[str, list[Touchpoint]]:
    """Answer a merge this journey already made (the link was read again).

    A worker can die after saving an orphan journey as merged but before its
    ``merge_in`` left; the link, not yet committed, is read again by the next
    owner and the customer's journey still waits for the answer. So the
    journey goes again as it went (the customer's journey takes each alias in
    once), and a link to another customer is answered with an acknowledgement.
    """
    into, alias = str(tp.properties["into"]), str(tp.properties["alias"])
    if into == state.merged_into:
        return into, [merge_in(replace(state, merged_into=None), into, alias, tp.timestamp)]
    return into, [merge_in(None, into, alias, tp.timestamp)]


def erase_request(key: str, at: int) -> Touchpoint:
    """The message that erases journey ``key`` (put on ``touchpoints.resolved``)."""
    return contract.internal_touchpoint(
        ERASE, f"erase:{key}:{at}", at, anonymous_id=key, properties={}
    )


def aliases_of(state: JourneyState) -> list[str]:
    """Every raw id the identity table may link to this journey."""
    out = set(state.anonymous_ids) | set(state.linked) | set(state.awaiting)
    out |= set(state.merged_from)
    out |= {f"email:{e.strip().lower()}" for e in state.emails}
    out |= {f"loyalty:{card}" for card in state.loyalty_ids}
    out.discard(state.key)
    return sorted(out)


def erase(state: JourneyState | None, at: int) -> Step:
    """Erase a journey: its state, its aliases' identity records, their orphan journeys.

    Whatever else came for the journey with the request goes too; what comes
    later starts a new journey.
    """
    step = Step(None, erase=True)
    if state is None:
        return step
    step.unlinks = aliases_of(state)
    for alias in step.unlinks:
        orphan = orphan_key(alias)
        if orphan != state.key:
            step.forwards.append((orphan, [erase_request(orphan, at)]))
    return step


def take_in(
    state: JourneyState | None,
    key: str,
    tps: list[Touchpoint],
    watermark: int,
    now: int,
    model: StageModel,
) -> Step:
    """Apply one journey's touchpoints (in order), then settle it to ``watermark``.

    ``state`` is the journey's current state (None: new); the rules change it
    in place. A merged journey passes what it gets on to the journey it merged
    into. An erase request erases it (:func:`erase`).
    """
    requests = [tp for tp in tps if tp.type == ERASE]
    if requests:
        return erase(state, requests[0].timestamp)
    if state is not None and state.merged_into is not None:
        step = Step(state)
        for tp in tps:
            if tp.type == MERGE:
                step.forwards.append(_answer_again(state, tp))
        rest = [tp for tp in tps if tp.type != MERGE]
        if rest:
            step.forwards.append((state.merged_into, rest))
        return step
    fresh = state is None
    if state is None:
        state = JourneyState(key=key)
    was_held = held(state, now)
    step = Step(state, save=True)
    effects = step.effects
    for tp in tps:
        if tp.type == MERGE:
            into, alias = str(tp.properties["into"]), str(tp.properties["alias"])
            if state.events or state.pending:
                step.forwards.append((into, [merge_in(state, into, alias, tp.timestamp)]))
                # Pending events stay: they went with the journey, and go again
                # if the merge is asked for again (see _answer_again).
                state.merged_into = into
                step.merged = True
            else:
                step.forwards.append((into, [merge_in(None, into, alias, tp.timestamp)]))
            continue
        if tp.type == MERGE_IN:
            alias = str(tp.properties["alias"])
            state.awaiting.pop(alias, None)
            if alias not in state.linked:
                state.linked.append(alias)
            if tp.properties.get("state") is None:
                continue
            other = JourneyState.from_dict(tp.properties["state"])
            state, out = rules.merge(state, other, alias, model)
            step.state = state
            effects.extend(out)
            continue
        if rules.is_duplicate(state, tp):
            continue  # a re-delivered event: neither applied nor late
        if tp.timestamp < state.settled_until:
            step.late += 1
        step.applied += 1
        state, out = rules.apply(state, tp, model)
        step.state = state
        effects.extend(out)
        if tp.customer_id is not None:
            for alias in linked_aliases(tp):
                if alias not in state.linked and alias not in state.awaiting:
                    state.awaiting[alias] = now
    if state.merged_into is None and not held(state, now):
        step.unanswered = drop_expired_links(state, now)
        state, out = rules.advance(state, watermark, model)
        step.state = state
        if was_held:
            # The last identity link just answered: the journey's own watermark
            # moves only now (fire delay is measured from both).
            out = [identity_ready(e, now) for e in out]
        effects.extend(out)
    if fresh and not (state.events or state.pending or state.merged_into or state.linked):
        step.state, step.save = None, False  # an ack for an alias with no journey
        return step
    return step


def take_segments(
    state: JourneyState | None,
    key: str,
    segments: list[list[Touchpoint]],
    watermark: int,
    now: int,
    model: StageModel,
) -> Step:
    """:func:`take_in` of one journey's touchpoints of a batch, message by message.

    Taken in together unless a merge comes before later messages: then each
    message is taken in as separately as it came (the merge sends the journey
    away, and what came after it follows it).
    """
    if len(segments) == 1 or not any(tp.type == MERGE for seg in segments[:-1] for tp in seg):
        tps = segments[0] if len(segments) == 1 else [tp for seg in segments for tp in seg]
        return take_in(state, key, tps, watermark, now, model)
    total = Step(state)
    for seg in segments:
        step = take_in(total.state, key, seg, watermark, now, model)
        total.state = step.state
        total.save = (total.save or step.save) and step.state is not None
        total.effects.extend(step.effects)
        total.forwards.extend(step.forwards)
        total.applied += step.applied
        total.late += step.late
        total.merged = total.merged or step.merged
        total.unanswered.extend(step.unanswered)
    return total


def check(state: JourneyState | None, watermark: int, now: int, model: StageModel) -> Step:
    """Settle one journey to ``watermark`` (a timer's check; stale checks are no-ops).

    A journey still waiting for its links is not settled: ``held_until`` says
    when to look again. ``state`` None (or merged) gives an empty step.
    """
    if state is None or state.merged_into is not None:
        return Step(state)
    if held(state, now):
        return Step(state, held_until=held_until(state))
    if watermark <= state.settled_until:
        return Step(state)
    step = Step(state, save=True)
    step.unanswered = drop_expired_links(state, now)
    state, step.effects = rules.advance(state, watermark, model)
    step.state = state
    return step
