"""One customer's data and consent: ``journey suppress``, ``forget`` and ``export``."""

from __future__ import annotations

import argparse
import json

from stream.cli.environment import resolve_broker, resolve_stack
from stream.security import require_secrets
from stream.settings import Settings


def cmd_suppress(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    import redis.asyncio as aioredis

    from stream.dispatch.guards import Guards, Keys

    settings = resolve_stack(settings)
    require_secrets(settings, "suppress")

    async def run() -> dict[str, object]:
        client = aioredis.Redis.from_url(settings.redis.url)
        guards = Guards(client, Keys(settings.dispatch.key_prefix))
        try:
            if args.action == "add":
                return {"added": await guards.suppress(*args.entries)}
            if args.action == "remove":
                return {"removed": await guards.unsuppress(*args.entries)}
            if args.action == "check":
                return {e: await guards.is_suppressed(e) for e in args.entries}
            members = await client.smembers(guards.keys.suppressed)
            return {
                "suppressed": sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            }
        finally:
            await client.aclose()

    if args.action != "list" and not args.entries:
        raise SystemExit(
            "journey suppress add|remove|check needs at least one email or customer id"
        )
    print(json.dumps(asyncio.run(run())))
    return 0


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from stream.privacy import forget

    settings = resolve_broker(settings)
    print(json.dumps(forget(settings, args.customer_id)))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from stream.privacy import export

    settings = resolve_stack(settings)
    print(json.dumps(export(settings, args.customer_id, args.worker), indent=2))
    return 0
