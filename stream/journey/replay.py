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
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from stream import contract
from stream.contract import INTERNAL_SOURCE, Rejected, Touchpoint
from stream.ingest.identity import LINK, resolve
from stream.journey import rules
from stream.journey.clock import NEVER, DueIndex
from stream.journey.model import journey_model
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState, Transition
from stream.journey.visits import VisitEffect
from stream.settings import Settings
from stream.triggers.trigger import Trigger

END = 2**62


class Oracle:
    """Identity resolution and journey rules over an ordered event log.

    The watermark follows the log (newest event time seen minus the allowed
    lateness), as a single-partition stream would. As the stream's timer does,
    every journey the watermark makes due (pending events, deadlines, lapses)
    settles when it passes, whether or not an event of its own arrives: an
    orphan journey that settled before an identity link merged it shows its own
    transitions in both. :meth:`finish` advances every journey to ``until``
    (default: everything settles).
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

    def _collect(self, effects: list[rules.Effect]) -> None:
        transitions, triggers, recoveries = rules.split(effects)
        self.transitions.extend(transitions)
        self.triggers.extend(triggers)
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
            self._identity_effects(resolve(link, self.identity.get))
        if tp.type == LINK or tp.source == INTERNAL_SOURCE:
            return
        state = self.states.get(res.journey_key) or JourneyState(key=res.journey_key)
        state, out = rules.apply(state, tp, self.model)
        self._collect(out)
        state, out = rules.advance(state, self.watermark, self.model)
        self._collect(out)
        self._put(state)
        self.settle(self.watermark)

    def _put(self, state: JourneyState) -> None:
        self.states[state.key] = state
        due = None if state.merged_into is not None else rules.next_due(state, self.model)
        self.due.schedule(state.key, due)

    def settle(self, watermark: int) -> None:
        """Advance every journey the watermark made due (the stream's timer checks)."""
        for key in self.due.pop_due(watermark):
            state = self.states[key]
            if state.merged_into is not None:
                continue
            state, out = rules.advance(state, watermark, self.model)
            self._collect(out)
            self._put(state)

    def _identity_effects(self, res: Any) -> None:
        if res.record is not None:
            alias, customer = res.record
            self.identity[alias] = customer
        for orphan_key, merge_tp in res.merges:
            orphan = self.states.get(orphan_key)
            if orphan is None or orphan.merged_into is not None:
                continue
            if not (orphan.events or orphan.pending):
                continue
            into_key = str(merge_tp.properties["into"])
            into = self.states.get(into_key) or JourneyState(key=into_key)
            into, out = rules.merge(into, orphan, str(merge_tp.properties["alias"]), self.model)
            self._collect(out)
            orphan.merged_into = into_key
            orphan.pending = []
            self._put(orphan)
            self._put(into)

    def finish(self, until: int = END) -> None:
        for key, state in self.states.items():
            if state.merged_into is None:
                state, out = rules.advance(state, until, self.model)
                self._collect(out)
                self.states[key] = state

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
