"""``journey report`` on a log that holds dispatcher outcomes: the follow-ups section,
computed by the same pure attribution code as the stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from stream.journey.model import journey_model
from stream.journey.replay import read_log, run_oracle
from stream.settings import load_settings
from tests.builders import NOON, outcome_record
from tests.helpers import REPO

MIN = 60_000
DAY = 86_400_000


def journey(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=True,
    )


def cart_leaver(name: str, at: int) -> list[dict[str, Any]]:
    """Identified (with a loyalty card), adds to cart and leaves: the cart rule fires."""
    return [
        {
            "event_id": f"{name}-id",
            "type": "identify",
            "channel": "web",
            "timestamp": at - MIN,
            "customer_id": name,
            "properties": {"email": f"{name}@example.com", "loyalty_id": f"L-{name}"},
        },
        {
            "event_id": f"{name}-add",
            "type": "add_to_cart",
            "channel": "web",
            "timestamp": at,
            "customer_id": name,
            "properties": {"sku": "S1", "price": 30.0, "quantity": 1, "cart_id": f"k-{name}"},
        },
    ]


def test_report_adds_followups_when_the_log_holds_dispatch_outcomes(tmp_path: Path) -> None:
    people = [f"c{i}" for i in range(6)]
    events = [e for i, p in enumerate(people) for e in cart_leaver(p, NOON + i * MIN)]
    # Two days later c0, c1 buy online, c2 in store under its loyalty card only;
    # c5 bought after its window (7 days) closed.
    for p in ("c0", "c1"):
        events.append(
            {
                "event_id": f"{p}-buy",
                "type": "purchase",
                "channel": "web",
                "timestamp": NOON + 2 * DAY,
                "customer_id": p,
                "properties": {"order_id": f"o-{p}", "value": 30.0, "currency": "EUR"},
            }
        )
    events.append(
        {
            "event_id": "c2-pos",
            "type": "pos_purchase",
            "channel": "pos",
            "timestamp": NOON + 2 * DAY,
            "properties": {
                "loyalty_id": "L-c2",
                "order_id": "R-c2",
                "value": 12.0,
                "currency": "EUR",
            },
        }
    )
    events.append(
        {
            "event_id": "c5-buy",
            "type": "purchase",
            "channel": "web",
            "timestamp": NOON + 9 * DAY,
            "customer_id": "c5",
            "properties": {"order_id": "o-c5", "value": 30.0, "currency": "EUR"},
        }
    )
    events.sort(key=lambda e: e["timestamp"])
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    # The triggers the engine fires for this log, decided as a dispatcher would.
    settings = load_settings(environ={})
    model = journey_model(settings)
    with log.open("rb") as f:
        valid = [tp for tp in read_log(f) if not hasattr(tp, "reason")]
    fired = {
        t.journey_key: t
        for t in run_oracle(valid, model, int(settings.journey.allowed_lateness_s * 1000)).triggers
        if t.rule == "cart"
    }
    assert set(fired) == set(people)
    decision = {
        "c0": "sent",
        "c1": "sent",
        "c2": "sent",
        "c3": "held_out",
        "c4": "capped",
        "c5": "held_out",
    }
    with log.open("ab") as f:
        for p, outcome in decision.items():
            t = fired[p]
            f.write(
                orjson.dumps(outcome_record(t.trigger_id, outcome, key=p, at=t.deadline)) + b"\n"
            )
        f.write(b'{"trigger_id": "x", "outcome": "sent"}\n')  # broken: rejected, reported

    run = journey("report", str(log), "--as-of", str(NOON + 30 * DAY))
    rep = orjson.loads(run.stdout)
    assert b"6 dispatch outcomes" in run.stderr, run.stderr
    assert b"rejected" in run.stderr
    [cart] = rep["followups"]
    assert (cart["rule"], cart["decided"], cart["sent"], cart["held_out"]) == ("cart", 5, 3, 2)
    assert (cart["treated_conversions"], cart["control_conversions"]) == (3, 0)
    assert cart["revenue_attributed"] == 72.0 and cart["currency"] == "EUR"
    assert cart["verdict"] == "insufficient"  # far below [attribution] min_per_arm
    # A log without outcomes has no follow-ups section.
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert "followups" not in orjson.loads(journey("report", str(plain)).stdout)
