"""``journey replay``: the offline oracle.

Runs an event log through the same pure functions the stream uses (identity
resolution, journey rules) in one process, with no Kafka. For the same events,
the streaming pipeline must end with the same journey states and the same set
of transitions and follow-up triggers. When the model keeps stage visits
(:func:`stream.analytics.config.map_model`), the oracle collects the visits
opened and closed as well (``journey report`` aggregates them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import IO

import orjson

from stream import contract
from stream.contract import INTERNAL_SOURCE, Rejected, Touchpoint
from stream.ingest.identity import Resolution, resolve
from stream.journey import linking, rules
from stream.journey.clock import NEVER, DueIndex
from stream.journey.model import journey_model
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState, Transition
from stream.journey.visits import VisitEffect
from stream.settings import Settings
from stream.triggers.trigger import Trigger

END = 2**62


#: The oracle has no wall clock: identity links are answered within the event
#: that sent them, so ``now`` only has to keep a journey waiting for its links.
NOW = 0


class Oracle:
    """Identity resolution and the identity-link protocol over an ordered event log.

    The same pure code the stream runs (``stream.ingest.identity.resolve`` and
    ``stream.journey.linking``), with the messages between journeys (merges,
    their answers, links) delivered in one process, each event's before the
    next event. The watermark follows the log (newest event time seen minus
    the allowed lateness), as a single-partition stream would. As the stream's
    timer does, every journey the watermark makes due (pending events,
    deadlines, lapses) settles when it passes, whether or not an event of its
    own arrives: an orphan journey that settled before an identity link merged
    it shows its own transitions in both. :meth:`finish` advances every
    journey to ``until`` (default: everything settles).
    """

    def __init__(self, model: StageModel, lateness_ms: int) -> None:
        self.model = model
        self.lateness_ms = lateness_ms
        self.identity: dict[str, str] = {}
        self.states: dict[str, JourneyState] = {}
        self.transitions: list[Transition] = []
        self.triggers: list[Trigger] = []
        self.recoveries = 0
        #: Visits opened and closed, in the order produced (empty unless the model keeps them).
        self.visits: list[VisitEffect] = []
        self.seen: set[str] = set()
        self.max_event_time = NEVER
        self.rejected = 0
        self.duplicates = 0
        #: Journeys by the watermark at which they next need settling.
        self.due = DueIndex()
        #: Touchpoints on their way to a journey (the stream's ``touchpoints.resolved``).
        self._mail: deque[tuple[str, list[Touchpoint]]] = deque()

    def _collect(self, effects: list[rules.Effect]) -> None:
        transitions, triggers, recoveries = rules.split(effects)
        self.transitions.extend(transitions)
        # When identity links answered is a wall-clock measurement of the stream.
        self.triggers.extend(
            replace(t, extra={k: v for k, v in t.extra.items() if k != "identity_ready_at"})
            for t in triggers
        )
        self.recoveries += len(recoveries)
        self.visits.extend(rules.visit_effects(effects))

    @property
    def watermark(self) -> int:
        return NEVER if self.max_event_time == NEVER else self.max_event_time - self.lateness_ms

    def feed(self, tp: Touchpoint) -> None:
        if tp.event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(tp.event_id)
        self.max_event_time = max(self.max_event_time, tp.timestamp)
        res = resolve(tp, self.identity.get)
        self._identity_effects(res)
        for _alias, link in res.links:
            # Where the alias lives, the link records it and asks its orphan to merge.
            self._identity_effects(resolve(link, self.identity.get))
        if tp.source != INTERNAL_SOURCE:
            self._mail.append((res.journey_key, [tp]))
        self._deliver()
        self.settle(self.watermark)

    def _identity_effects(self, res: Resolution) -> None:
        if res.record is not None:
            alias, customer = res.record
            self.identity[alias] = customer
        for orphan, merge in res.merges:
            self._mail.append((orphan, [merge]))

    def _deliver(self) -> None:
        """Hand every touchpoint on its way to its journey, and what that sends on."""
        while self._mail:
            key, tps = self._mail.popleft()
            self._step(
                key,
                linking.take_in(self.states.get(key), key, tps, self.watermark, NOW, self.model),
            )

    def _step(self, key: str, step: linking.Step) -> None:
        self._collect(step.effects)
        if step.save and step.state is not None:
            self._put(step.state)
        elif step.erase:
            self.states.pop(key, None)
            self.due.schedule(key, None)
        self._mail.extend(step.forwards)

    def _put(self, state: JourneyState) -> None:
        self.states[state.key] = state
        due = None if state.merged_into is not None else rules.next_due(state, self.model)
        self.due.schedule(state.key, due)

    def settle(self, watermark: int) -> None:
        """Settle every journey the watermark made due (the stream's timer checks)."""
        for key in self.due.pop_due(watermark):
            self._step(key, linking.check(self.states.get(key), watermark, NOW, self.model))
        self._deliver()

    def finish(self, until: int = END) -> None:
        for key in list(self.states):
            self._step(key, linking.check(self.states[key], until, NOW, self.model))

    def final_states(self) -> Iterator[JourneyState]:
        for state in self.states.values():
            if state.merged_into is None:
                yield state


def read_log(stream: IO[bytes]) -> Iterator[Touchpoint | Rejected]:
    for raw in stream:
        raw = raw.strip()
        if raw:
            yield from contract.decode_message(raw)


def run_oracle(
    events: Iterable[Touchpoint], model: StageModel, lateness_ms: int, until: int = END
) -> Oracle:
    oracle = Oracle(model, lateness_ms)
    for tp in events:
        oracle.feed(tp)
    oracle.finish(until)
    return oracle


def report_lines(oracle: Oracle) -> Iterator[bytes]:
    for tr in oracle.transitions:
        yield orjson.dumps({"kind": "transition", **tr.to_dict()})
    for trigger in oracle.triggers:
        body = trigger.to_dict()
        # The trigger's own kind (abandonment / transition) would clash with the line kind.
        body["trigger_kind"] = body.pop("kind")
        yield orjson.dumps({"kind": "trigger", **body})
    for state in sorted(oracle.final_states(), key=lambda s: s.key):
        summary = state.summary()
        yield orjson.dumps({"kind": "state", **summary, "customer_id": state.key})


def main(args: argparse.Namespace, settings: Settings) -> int:
    model = journey_model(settings, args.stage_model)
    lateness_ms = int(settings.journey.allowed_lateness_s * 1000)
    source = sys.stdin.buffer if str(args.file) == "-" else open(args.file, "rb")  # noqa: SIM115
    rejected = 0
    valid: list[Touchpoint] = []
    with source:
        for item in read_log(source):
            if isinstance(item, Rejected):
                rejected += 1
                print(f"rejected: {item.reason}", file=sys.stderr)
            else:
                valid.append(item)
    if args.until == "end":
        until = END
    elif args.until is None:
        # What a caught-up, idle stream would have settled by now.
        until = int(time.time() * 1000) - lateness_ms
    else:
        until = contract.parse_timestamp(int(args.until) if args.until.isdigit() else args.until)
    oracle = run_oracle(valid, model, lateness_ms, until)
    out = sys.stdout.buffer
    for line in report_lines(oracle):
        out.write(line + b"\n")
    out.flush()
    print(
        f"replayed {len(valid)} events ({rejected} rejected, {oracle.duplicates} duplicates): "
        f"{sum(1 for _ in oracle.final_states())} journeys, {len(oracle.transitions)} transitions, "
        f"{len(oracle.triggers)} triggers",
        file=sys.stderr,
    )
    return 0
