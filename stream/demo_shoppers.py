"""The demo's simulated shoppers: journeys played in real time through the collector
(Segment ``/v1/batch`` calls, as an SDK sends them) and the POS export, with a
share of malformed calls to show the dead-letter topic."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from stream.settings import Settings

#: Share of simulated web calls sent with one malformed message, to show the DLQ.
BAD_CALL_RATE = 0.05


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class Shoppers(threading.Thread):
    """Plays simulated journeys in real time through the collector and the POS export."""

    def __init__(
        self, settings: Settings, events: list[dict], pos_file: Path, stop: threading.Event
    ):
        super().__init__(daemon=True, name="shoppers")
        self.settings = settings
        self.events = events
        self.pos_file = pos_file
        self.stop_event = stop
        self.sent: Counter[str] = Counter()
        key = next(iter(settings.collector.write_keys))
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.url = f"http://127.0.0.1:{settings.collector.port}/v1/batch"

    def run(self) -> None:
        from stream.simulator import to_pos_row, to_segment

        pending_web: list[dict] = []
        n_calls = 0
        for event in self.events:
            delay = event["timestamp"] / 1000 - time.time()
            if delay > 0 and self.stop_event.wait(min(delay, 1.0) if delay > 1.0 else delay):
                break
            if self.stop_event.is_set():
                break
            if event["channel"] == "pos":
                if event["type"] == "pos_purchase":
                    with self.pos_file.open("a") as fh:
                        fh.write(json.dumps(to_pos_row(event)) + "\n")
                    self.sent["pos"] += 1
                continue
            pending_web.append(to_segment(event))
            if len(pending_web) >= 5 or event is self.events[-1]:
                n_calls += 1
                self._post(pending_web, bad=(n_calls % int(1 / BAD_CALL_RATE) == 0))
                pending_web = []
        if pending_web:
            self._post(pending_web, bad=False)

    def _post(self, batch: list[dict], bad: bool) -> None:
        messages = list(batch)
        if bad:
            messages.append({"type": "track", "event": "Product Viewed"})  # no ids, no messageId
        body = json.dumps({"batch": messages}).encode()
        status, _ = http(
            self.url, body, {"Content-Type": "application/json", "Authorization": self.auth}
        )
        self.sent[f"http_{status}"] += 1
        self.sent["web"] += len(batch)


#: Simulated think times are divided by this so a short demo shows whole sessions.
SPEED = 6.0


def demo_events(rate: float, duration_s: float, seed: int) -> list[dict]:
    """Simulated events due within the demo's run, about ``rate`` per second.

    Time is compressed by ``SPEED`` and event times are the wall-clock times at
    which the shoppers will send them, so the stream sees live traffic.
    """
    from stream.simulator import generate

    start = int(time.time() * 1000) + 2000
    end = start + int(duration_s * 1000)
    customers = max(5, int(rate * duration_s / 4))
    events = generate(customers, seed=seed, start_ms=start, span_s=duration_s * SPEED * 0.8)
    out = []
    for event in events:
        event["timestamp"] = start + int((event["timestamp"] - start) / SPEED)
        if event["timestamp"] <= end:
            out.append(event)
    return out
