"""The webhook channel's parts built from settings, for the dispatcher's shell."""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.dispatch.render import Renderer
from stream.dispatch.webhooks.channel import WebhookChannel
from stream.dispatch.webhooks.delivery import Publisher, WebhookDelivery
from stream.dispatch.webhooks.endpoints import channels_of
from stream.dispatch.webhooks.outbox import WebhookOutbox
from stream.dispatch.webhooks.sender import WebhookSender
from stream.settings import Settings


def build_webhooks(
    settings: Settings,
    client: aioredis.Redis,
    prefix: str,
    renderer: Renderer,
    publish: Publisher,
) -> tuple[WebhookChannel | None, WebhookDelivery | None]:
    """The channel the dispatcher queues through and the delivery loop to run beside it
    (both None when no endpoint is configured).

    Raises :class:`stream.defaults.ConfigError` when a rule's channels are invalid, an
    endpoint is malformed or has no secret, or a rule names an unknown endpoint.
    """
    routes, endpoints = channels_of(settings)
    if not endpoints:
        return None, None
    outbox = WebhookOutbox(client, prefix)
    delivery = WebhookDelivery(endpoints, outbox, WebhookSender(), publish, settings.webhooks)
    channel = WebhookChannel(routes, renderer, settings.dispatch, outbox, delivery.wake)
    return channel, delivery
