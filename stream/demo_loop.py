"""The demo's closed loop: simulated shoppers answer the follow-ups the engine decided.

Reads ``journey.dispatch`` (group-less, every partition) and, for each decided
outcome, asks :func:`stream.reactions.reaction` whether its customer comes
back and buys; such a purchase is sent when its time comes (its event time is
then), through ``send`` (the collector in the demo, the ``touchpoints`` topic
in the tests). Customers known only by a loyalty card or an email address are
left out (``unreachable``): the demo's shoppers are web shoppers.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from stream.analytics.attribution import ARMS
from stream.analytics.decisions import read_outcome
from stream.reactions import Reactions, reaction
from stream.settings import Settings

log = logging.getLogger(__name__)

POLL_MS = 200


def purchase_event(
    journey_key: str, trigger_id: str, at: int, value: float
) -> dict[str, Any] | None:
    """The touchpoint of a simulated order by the customer of ``journey_key`` (None: no web id)."""
    who: dict[str, Any]
    if journey_key.startswith("anon:"):
        who = {"anonymous_id": journey_key[len("anon:") :]}
    elif journey_key.startswith(("loyalty:", "email:")):
        return None
    else:
        who = {"customer_id": journey_key}
    return {
        "event_id": f"loop-{trigger_id}",
        "type": "purchase",
        "channel": "web",
        "timestamp": at,
        **who,
        "properties": {"order_id": f"loop-{trigger_id}", "value": value, "currency": "EUR"},
    }


class ClosedLoop(threading.Thread):
    """Simulated shoppers buying after follow-ups, at the rates ``reactions`` planted."""

    def __init__(
        self,
        settings: Settings,
        reactions: Reactions,
        send: Callable[[dict[str, Any]], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name="closed-loop")
        self.settings = settings
        self.reactions = reactions
        self.send = send
        self.stop_event = stop
        #: (rule, arm) -> decided, and purchases sent.
        self.decided: Counter[tuple[str, str]] = Counter()
        self.bought: Counter[tuple[str, str]] = Counter()
        self.unreachable = 0
        self._seen: set[str] = set()
        self._due: list[tuple[int, str, str, str, dict[str, Any]]] = []

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from stream.topics import client_options

        topic = self.settings.topics.dispatch
        consumer = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            receive_message_max_bytes=64 << 20,
            **client_options(self.settings.broker),
        )
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self.stop_event.is_set():
                for records in consumer.poll(timeout_ms=POLL_MS).values():
                    for record in records:
                        self._decided(record.value or b"")
                self._send_due()
        finally:
            consumer.close()

    def _decided(self, raw: bytes) -> None:
        try:
            out = read_outcome(raw)
        except Exception:
            return
        arm = ARMS.get(out.outcome)
        if arm is None or out.trigger_id in self._seen:
            return
        self._seen.add(out.trigger_id)
        self.decided[out.rule, arm] += 1
        bought = reaction(self.reactions, out.trigger_id, out.rule, out.outcome)
        if bought is None:
            return
        at = max(out.at, int(time.time() * 1000)) + bought.delay_ms
        event = purchase_event(out.journey_key, out.trigger_id, at, bought.value)
        if event is None:
            self.unreachable += 1
            return
        heapq.heappush(self._due, (at, out.trigger_id, out.rule, arm, event))

    def summary(self, worker_url: str, api_token: str, planted: Any) -> dict[str, Any]:
        """What was planted, what the shoppers did, and what ``GET /followups`` measured."""
        import json
        import urllib.request

        req = urllib.request.Request(
            f"{worker_url}/followups", headers={"Authorization": f"Bearer {api_token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                measured = json.loads(resp.read())["followups"]
        except Exception as exc:
            measured = f"not available: {exc!r}"
        return {
            "planted": {
                rule: {"treated": p.treated, "control": p.control, "uplift": round(p.uplift, 4)}
                for rule, p in planted.items()
            },
            "shoppers": {
                f"{rule}/{arm}": {"decided": n, "bought": self.bought[rule, arm]}
                for (rule, arm), n in sorted(self.decided.items())
            },
            "measured": measured,
        }

    def _send_due(self) -> None:
        now = int(time.time() * 1000)
        while self._due and self._due[0][0] <= now:
            _, _, rule, arm, event = heapq.heappop(self._due)
            try:
                self.send(event)
            except Exception as exc:  # the demo goes on; the purchase is lost and logged
                log.warning("closed loop: purchase not sent: %r", exc)
                continue
            self.bought[rule, arm] += 1


def collector_sender(settings: Settings) -> Callable[[dict[str, Any]], None]:
    """Send a simulated order as a web SDK would: a Segment call to the collector."""
    import base64
    import json
    import urllib.request

    from stream.simulator import to_segment

    key = next(iter(settings.collector.write_keys))
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    url = f"http://127.0.0.1:{settings.collector.port}/v1/batch"

    def send(event: dict[str, Any]) -> None:
        body = json.dumps({"batch": [to_segment(event)]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": auth}
        req = urllib.request.Request(url, data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"collector answered {resp.status}")

    return send
