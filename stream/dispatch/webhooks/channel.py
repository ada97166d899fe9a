"""The webhook side of a send: a decided trigger queued for its rule's endpoints.

The dispatcher calls :meth:`WebhookChannel.queue` where it sends a decided
trigger through its channels; :mod:`stream.dispatch.webhooks.delivery` does the
requests. Queuing is idempotent, so a trigger decided again after a crash is
not queued twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stream.dispatch.render import Renderer
from stream.dispatch.webhooks.body import personalisation, request_body
from stream.dispatch.webhooks.outbox import WebhookOutbox
from stream.settings import DispatchSettings
from stream.triggers.channels import EMAIL_ONLY, Route
from stream.triggers.trigger import Trigger


class WebhookChannel:
    def __init__(
        self,
        routes: Mapping[str, Route],
        renderer: Renderer,
        dispatch: DispatchSettings,
        outbox: WebhookOutbox,
        wake: Callable[[], None],
    ) -> None:
        self.routes = dict(routes)
        self.renderer = renderer
        self.dispatch = dispatch
        self.outbox = outbox
        self.wake = wake

    def route(self, rule: str) -> Route:
        """The channels of ``rule`` (a rule no longer configured: email)."""
        return self.routes.get(rule, EMAIL_ONLY)

    async def queue(self, trigger: Trigger, raw: bytes, route: Route, now_ms: int) -> None:
        """Queue ``trigger`` for each endpoint of ``route``, due now."""
        if not route.webhooks:
            return
        body = request_body(trigger, personalisation(trigger, self.renderer, self.dispatch), now_ms)
        entry = {
            "trigger_id": trigger.trigger_id,
            "rule": trigger.rule,
            "journey_key": trigger.journey_key,
            "customer_id": trigger.customer_id,
            "attempts": 0,
            "queued_at": now_ms,
            "body": body.decode(),
            "raw": raw.decode(errors="replace"),
        }
        await self.outbox.enqueue(route.webhooks, entry, now_ms)
        self.wake()
