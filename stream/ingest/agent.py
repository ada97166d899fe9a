"""Ingest agent: validate, drop exact duplicates, resolve identity, forward or dead-letter.

Consumes ``touchpoints`` (one event or a JSON array per message; an array may
pack events of several raw ids that all hash to the message's partition, see
``stream.contract``; an event of a packed message that does not is re-routed to
its own partition, where its identity records live). Invalid input goes to
``journey.dlq`` with the original bytes and the reason in headers; valid events
go to ``touchpoints.resolved`` keyed by journey key, packed as one message per
destination partition per batch (see
``contract.dumps_groups``) so the journey agent pays Faust's per-message cost
once for many events.

Identity links for aliases another partition owns travel on ``journey.links``
(co-partitioned with ``touchpoints``) and are handled the same way by a second
agent, ``links``, with its own stream buffer, so they never wait behind a
touchpoints backlog. Each source's event-time marks travel there too, after the
links they cover, and the ``links`` agent relays them to the journey partitions
once it handled those links (``JourneyShell.relay_marks``): a journey partition's
watermark never passes an orphan journey's merge still on its way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any, Protocol

import faust
from faust.streams import _current_event
from faust.types import TP

from stream import contract, dlq
from stream.contract import NEVER, Rejected, Touchpoint
from stream.faust_ext.fastpath import (
    Handoff,
    changelog_persisted,
    key_partitions,
    read_raw,
    send_direct,
    write_raw,
)
from stream.ingest.dedupe import RecentIds
from stream.ingest.identity import resolve
from stream.observability import metrics as m
from stream.settings import Settings

log = logging.getLogger(__name__)

#: How long ingest waits to fill a batch before forwarding what it has.
BATCH_WINDOW_S = 0.05
#: Identity links per packed ``touchpoints`` message (each well under 1 KB).
MAX_PACKED_LINKS = 500
#: How many ``touchpoints.resolved`` messages ingest may be ahead of this
#: worker's journey agent on a partition it owns (see ``keep_pace``).
MAX_AHEAD_MESSAGES = 8
#: Longest ingest waits after a batch for the journey agent to catch up.
MAX_AHEAD_WAIT_S = 2.0


def received_ms(message: Any) -> int | None:
    """When a record was received: its Kafka timestamp (the producer sets it on
    receipt, the broker on append), so a replay decides as the first read did."""
    ts = message.timestamp
    return round(ts * 1000) if ts else None


class JourneySide(Protocol):
    """What ingest needs of the journey agent of its worker (``JourneyShell``)."""

    @property
    def processed(self) -> dict[Any, int]:
        """Offsets handled per input topic-partition in this assignment (shared)."""

    @property
    def handoff(self) -> Handoff:
        """Spares the journey agent decoding what ingest just encoded."""

    def resolved_partition(self, key: str) -> int: ...

    def observe_source(self, partition: int, newest: int, now: int) -> None: ...

    def observe_relay(self, links_partition: int, mark: contract.Mark, now: int) -> None: ...

    async def relay_marks(self, links_partitions: Iterable[int]) -> None: ...


def register_ingest(app: faust.App, settings: Settings, topics: Any, shell: JourneySide) -> None:
    """Register the ingest and links agents and the identity table on ``app``.

    ``shell`` keeps the offsets handled per topic-partition and each source
    partition's event-time progress, which it sends on as marks once the
    events they cover were forwarded.
    """
    processed: dict[Any, int] = shell.processed
    handoff: Handoff | None = shell.handoff
    recent = RecentIds(settings.worker.dedupe_capacity)
    #: Ids of the merge and link messages this process sent: each goes once per
    #: process, and again after a restart (a link read again may be one whose
    #: messages a killed worker never sent).
    sent = RecentIds(settings.worker.dedupe_capacity)

    def unsent(message_id: str) -> bool:
        return not sent.seen(message_id)

    identities = app.Table(
        "identity",
        default=None,
        partitions=settings.topics.partitions,
        key_type=bytes,
        value_type=bytes,
    )

    def lookup(raw_key: str) -> str | None:
        value = read_raw(identities, raw_key.encode())
        return value.decode() if value else None

    resolved_name = settings.topics.resolved
    touchpoints_name = settings.topics.touchpoints
    batch_size = settings.worker.forward_batch

    #: The ``touchpoints`` partition a raw id hashes to.
    home_partition = key_partitions(app, touchpoints_name)
    #: The ``touchpoints.resolved`` partition a journey key hashes to.
    partition_of = shell.resolved_partition  # one cache with the journey agent's sends

    @app.agent(topics.touchpoints, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        # Batches of events: Faust's per-message send cost is paid once per
        # destination partition per batch instead of once per event. Events are
        # acked only after the batch's sends were handed to the producer, and
        # Faust flushes the producer before committing offsets.
        batches = stream.take_events(batch_size, within=BATCH_WINDOW_S)  # type: ignore[attr-defined]
        async for events in batches:
            await handle(events, from_links=False)

    @app.agent(topics.links, name="links")
    async def identity_links(stream: faust.StreamT) -> None:
        # Identity links have their own agent, hence their own stream buffer:
        # behind touchpoints in ingest's (thousands of packed messages under a
        # backlog) a link, and the journey waiting for its answer, would wait
        # for all of them. Same handling, but never held back by ``keep_pace``.
        batches = stream.take_events(batch_size, within=BATCH_WINDOW_S)  # type: ignore[attr-defined]
        async for events in batches:
            await handle(events, from_links=True)

    limits = settings.limits
    window = contract.EventTimeWindow.of_seconds(
        settings.journey.max_future_s, settings.journey.max_past_s
    )

    async def handle(events: list[faust.EventT], *, from_links: bool) -> None:
        """One batch of ``touchpoints`` (or of ``journey.links``) messages.

        Every message and every event in it is handled on its own: one that
        breaks the contract is dead-lettered with the reason, one that fails
        in any other way with the exception (counted, logged with its topic,
        partition and offset), and the batch goes on. What can still fail
        here is the broker (the sends at the end).
        """
        stage = "links" if from_links else "ingest"
        by_key: dict[str, list[Touchpoint]] = defaultdict(list)
        ingested: dict[tuple[str, str], int] = defaultdict(int)
        links_out: dict[int, list[Touchpoint]] = defaultdict(list)
        now_ms = int(time.time() * 1000)
        newest: dict[int, int] = {}
        #: The last identity record written per partition, and how many were
        #: (see ``changelog_persisted``).
        records: dict[int, tuple[Any, int]] = {}
        #: Source marks read on ``journey.links``: (links partition, mark).
        relayed: list[tuple[int, contract.Mark]] = []

        async def take(event: faust.EventT, raw: bytes) -> None:
            """The events of one message: forwarded, re-routed, or dead-lettered."""
            message = event.message
            source = message.partition
            msg_key = event.key.decode(errors="replace") if event.key else None
            items = contract.decode_message(
                raw, limits, received_ms=received_ms(message), window=window
            )
            for item in items:
                if isinstance(item, Rejected):
                    head = dlq.headers(item.reason, message, stage, item.index)
                    await dlq.send(topics.dlq, item.raw, head, limits, item.kind, event.key)
                    continue
                try:
                    forwarded = await take_one(item, event, msg_key)
                except Exception as exc:
                    dlq.log_failure(stage, message, exc, f"event {item.event_id!r} of")
                    head = dlq.headers(dlq.error_reason(exc), message, stage)
                    head["event_id"] = item.event_id.encode()
                    value = contract.encode_rejected(item.to_dict(), limits)
                    await dlq.send(topics.dlq, value, head, limits, dlq.ERROR_LABEL, event.key)
                    continue
                if forwarded and not from_links and item.timestamp > newest[source]:
                    newest[source] = item.timestamp

        async def take_one(item: Touchpoint, event: faust.EventT, msg_key: str | None) -> bool:
            """One valid event; whether this partition passes it on (its mark covers it)."""
            source = event.message.partition
            raw_key = item.routing_key
            if raw_key != msg_key and home_partition(raw_key) != source:
                # Packed by a producer with another partitioner: send it home.
                m.REROUTED.inc()
                await topics.touchpoints.send(key=raw_key.encode(), value=contract.dumps(item))
                return False
            if recent.seen(item.event_id):
                m.DUPLICATES.inc()
                return False
            res = resolve(item, lookup, unsent)
            if res.forget is not None:
                # An erased customer's alias: an empty record (stamped, so no
                # older link a paused worker writes later can win over it).
                fut = await write_raw(app, identities, res.forget.encode(), b"", source)
                records[source] = (fut, records[source][1] + 1 if source in records else 1)
                m.IDENTITY_UNLINKS.inc()
            if res.record is not None:
                alias, customer = res.record
                fut = await write_raw(app, identities, alias.encode(), customer.encode(), source)
                records[source] = (fut, records[source][1] + 1 if source in records else 1)
                m.IDENTITY_LINKS.inc()
            for orphan, merge in res.merges:
                by_key[orphan].append(merge)
            for alias, link in res.links:
                links_out[home_partition(alias)].append(link)
            if item.source == contract.INTERNAL_SOURCE:
                return True
            ingested[item.channel, m.type_label(item)] += 1
            m.EVENT_TIME_LAG.observe(max(0.0, (now_ms - item.timestamp) / 1000))
            by_key[res.journey_key].append(item)
            return True

        for event in events:
            processed[event.message.tp] = event.message.offset
            source = event.message.partition
            if not from_links:
                newest.setdefault(source, NEVER)
            raw = event.value
            if raw is None:
                continue
            if from_links and raw[:1] == b"{":
                mark = contract.loads_mark(raw)
                if mark is not None:
                    if mark.kind == contract.SOURCE_MARK:
                        relayed.append((source, mark))
                    continue
            # Table reads and writes belong to this event's partition.
            _current_event.set(weakref.ref(event))
            try:
                await take(event, raw)
            except Exception as exc:
                dlq.log_failure(stage, event.message, exc)
                head = dlq.headers(dlq.error_reason(exc), event.message, stage)
                await dlq.send(topics.dlq, raw, head, limits, dlq.ERROR_LABEL, event.key)
        # Links for aliases other partitions own, packed per partition (see
        # ``stream.contract``), on ``journey.links``: co-partitioned with
        # touchpoints and read by their own agent, so a link (and the journey
        # waiting for its answer) never queues behind a touchpoints backlog.
        for partition, out in links_out.items():
            for i in range(0, len(out), MAX_PACKED_LINKS):
                chunk = out[i : i + MAX_PACKED_LINKS]
                await send_direct(
                    app,
                    topics.links,
                    contract.dumps(chunk[0]) if len(chunk) == 1 else contract.dumps_many(chunk),
                    key=chunk[0].routing_key.encode(),
                    partition=partition,
                )
        for fut, count in records.values():
            changelog_persisted(identities, fut, count)
        for (channel, type_), n in ingested.items():
            m.INGESTED.labels(channel=channel, type=type_).inc(n)
        by_partition: dict[int, list[tuple[str, list[Touchpoint]]]] = defaultdict(list)
        for key, tps in by_key.items():
            by_partition[partition_of(key)].append((key, tps))
        for partition, groups in by_partition.items():
            for value, held in contract.pack_groups_with(groups, contract.MAX_PACKED_BYTES):
                fut = await send_direct(app, topics.resolved, value, partition=partition)
                fut.add_done_callback(remember(handoff, partition, value, held))
        if not from_links:
            await keep_pace()

        # Only now (the batch handed to the producer) may the marks cover it.
        for source, t in newest.items():
            shell.observe_source(source, t, now_ms)
        if relayed:
            # The links before these marks were handled, their merges sent:
            # the journey partitions' watermarks may pass them now.
            for links_partition, mark in relayed:
                shell.observe_relay(links_partition, mark, now_ms)
            await shell.relay_marks({lp for lp, _ in relayed})

    #: ``touchpoints.resolved`` partition -> offsets of the packed messages ingest
    #: sent there that the journey agent had not processed when last looked at.
    unprocessed: dict[int, deque[int]] = defaultdict(deque)

    def remember(handoff: Handoff | None, partition: int, value: bytes, held: Any) -> Any:
        def sent(fut: Any) -> None:
            if not fut.cancelled() and fut.exception() is None:
                offset = fut.result().offset
                unprocessed[partition].append(offset)
                if handoff is not None:
                    handoff.put(partition, offset, value, held)

        return sent

    async def keep_pace() -> None:
        """Wait while this worker's journey agent is far behind what ingest sent it.

        Identity links are answered through ``touchpoints.resolved`` (the
        orphan journey's partition, then the customer's); a journey waits for
        those answers at most ``LINK_ACK_TIMEOUT_MS`` of wall time. Were ingest
        free to run ahead through a backlog, the answers would queue behind
        everything it forwarded and arrive too late. So ingest stays at most
        ``MAX_AHEAD_MESSAGES`` of its own packed messages ahead on each resolved
        partition this worker owns (bounded to ``MAX_AHEAD_WAIT_S`` per batch,
        and not while rebalancing; partitions other workers own are not waited
        for). Its own messages, not offsets: the offsets in between (identity
        answers, source marks, other workers' messages) are small, and counting
        them kept the journey agent waiting for input it had already been sent.
        """
        deadline = time.monotonic() + MAX_AHEAD_WAIT_S
        while not (app.rebalancing or app.in_recovery):
            owned = app.consumer.assignment()
            behind = False
            for partition, offsets in unprocessed.items():
                tp = TP(resolved_name, partition)
                done = processed.get(tp)
                if done is None or tp not in owned:
                    offsets.clear()
                    continue
                while offsets and offsets[0] <= done:
                    offsets.popleft()
                if len(offsets) > MAX_AHEAD_MESSAGES:
                    behind = True
                    break
            if not behind or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.005)
