"""The webhook request body: the trigger and its personalisation, as JSON bytes.

``personalisation`` holds what an email template sees (greeting, items with
their links, cart value, top products, last store, cart, shop and unsubscribe
links), so an SMS or push provider can word the same follow-up. The body is
built once, when the trigger is decided, and the same bytes go on every retry.
"""

from __future__ import annotations

from typing import Any

import orjson

from stream.dispatch import tokens
from stream.dispatch.links import TrackingLinks
from stream.dispatch.render import Renderer
from stream.settings import DispatchSettings
from stream.triggers.trigger import Trigger

#: The body's ``type``.
EVENT_TYPE = "journey.follow_up"


def personalisation(
    trigger: Trigger, renderer: Renderer, dispatch: DispatchSettings
) -> dict[str, Any]:
    """The template variables of ``trigger`` as plain data (no open pixel: no email)."""
    token = tokens.sign(
        tokens.TrackingToken(
            trigger.trigger_id, trigger.rule, trigger.journey_key, trigger.customer_id
        ),
        dispatch.tracking_secret,
    )
    links = TrackingLinks(dispatch.tracking_base_url, dispatch.shop_base_url, token)
    context = renderer.context(trigger, links)
    return {k: v for k, v in context.items() if k not in ("trigger", "open_pixel_url")}


def request_body(trigger: Trigger, personal: dict[str, Any], decided_at_ms: int) -> bytes:
    """The JSON bytes POSTed to every endpoint of the trigger's rule."""
    return orjson.dumps(
        {
            "id": trigger.trigger_id,
            "type": EVENT_TYPE,
            "rule": trigger.rule,
            "decided_at": decided_at_ms,
            "trigger": trigger.to_dict(),
            "personalisation": personal,
        }
    )
