"""Simulated touchpoints in the shapes the producers take in, and as a log.

:func:`to_segment` gives the Segment Tracking API message an SDK would send
the collector, :func:`to_pos_row` the POS export row ``journey pos`` reads,
:func:`write_jsonl` the JSON Lines event log ``journey replay`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from stream import contract
from stream.simulator.shoppers import AGENT

SEGMENT_EVENTS = {
    "product_view": "Product Viewed",
    "add_to_cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "checkout_started": "Checkout Started",
    "purchase": "Order Completed",
    "search": "Products Searched",
    "email_open": "Email Opened",
    "email_click": "Email Link Clicked",
}


def to_segment(event: dict[str, Any]) -> dict[str, Any]:
    """A web touchpoint as the Segment Tracking API message an SDK would send."""
    msg: dict[str, Any] = {
        "messageId": event["event_id"],
        "timestamp": contract.format_timestamp(event["timestamp"]),
        "context": {
            "userAgent": event.get("context", {}).get("user_agent", AGENT),
            "locale": event.get("context", {}).get("locale", "en-US"),
            "timezone": event.get("context", {}).get("timezone", "UTC"),
        },
    }
    if event.get("anonymous_id"):
        msg["anonymousId"] = event["anonymous_id"]
    if event.get("customer_id"):
        msg["userId"] = event["customer_id"]
    props = dict(event.get("properties", {}))
    if event["type"] == "page_view":
        msg.update(type="page", properties=props)
    elif event["type"] == "identify":
        msg.update(type="identify", traits=props)
    else:
        msg.update(
            type="track", event=SEGMENT_EVENTS.get(event["type"], event["type"]), properties=props
        )
    return msg


def to_pos_row(event: dict[str, Any]) -> dict[str, Any]:
    """A ``pos_purchase`` touchpoint as a POS JSON Lines export row."""
    props = event["properties"]
    row: dict[str, Any] = {
        "store_id": props["store_id"],
        "register": props.get("register", "R1"),
        "receipt_id": props["order_id"],
        "timestamp": contract.format_timestamp(event["timestamp"]),
        "items": props.get("products", []),
        "total": props.get("value"),
        "currency": props.get("currency", "EUR"),
        "kind": "sale",
    }
    for name in ("customer_id",):
        if event.get(name):
            row[name] = event[name]
    for name in ("loyalty_id", "email"):
        if props.get(name):
            row[name] = props[name]
    return row


def write_jsonl(path: Path, events: Sequence[dict[str, Any]]) -> None:
    with path.open("wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")
