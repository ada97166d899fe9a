"""Webhook endpoints from ``[webhooks]``, checked before the dispatcher starts (pure).

The dispatcher refuses to start (:class:`ConfigError`, one line per problem,
each naming its setting) when an endpoint is malformed, has no signing secret,
or a rule names an endpoint that is not configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from stream.defaults import ConfigError
from stream.settings import Settings, WebhookSettings
from stream.triggers.channels import Route, routes_by_rule, unknown_endpoints

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KEYS = frozenset({"name", "url", "secret", "timeout_s", "headers", "max_attempts", "concurrency"})
#: Headers the dispatcher sets itself; an endpoint's ``headers`` cannot replace them.
RESERVED = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "journey-signature"}
)
MAX_TIMEOUT_S = 300.0
MAX_ATTEMPTS = 100
MAX_CONCURRENCY = 256


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    secret: str
    timeout_s: float
    max_attempts: int
    concurrency: int
    headers: tuple[tuple[str, str], ...] = ()


def _number(raw: Mapping[str, Any], key: str, default: float, where: str, top: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= top:
        raise ConfigError(f"{where}: {key} must be a number in (0, {top:g}]")
    return float(value)


def _headers(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: headers must be a table of header names to values")
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
            raise ConfigError(f"{where}: header name {name!r} is not a valid HTTP header name")
        if name.lower() in RESERVED:
            raise ConfigError(f"{where}: header {name!r} is set by the dispatcher")
        if not isinstance(value, str) or len(value) > 1024 or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{where}: header {name!r} must be one line of text")
        out.append((name, value))
    return tuple(out)


def parse_endpoint(raw: Mapping[str, Any], where: str, ws: WebhookSettings) -> Endpoint:
    """One ``[[webhooks.endpoints]]`` table; :class:`ConfigError` naming ``where``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(raw) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: name must be lower-case letters, digits, '-' or '_'")
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: url must be an http:// or https:// URL")
    secret = ws.secrets.get(name) or raw.get("secret") or ""
    if not isinstance(secret, str) or not secret:
        raise ConfigError(
            f"{where}: endpoint {name!r} has no signing secret "
            f'(set JOURNEY_WEBHOOKS_SECRETS="{name}=<long random key>")'
        )
    return Endpoint(
        name=name,
        url=str(url),
        secret=secret,
        timeout_s=_number(raw, "timeout_s", ws.timeout_s, where, MAX_TIMEOUT_S),
        max_attempts=int(_number(raw, "max_attempts", ws.max_attempts, where, MAX_ATTEMPTS)),
        concurrency=int(_number(raw, "concurrency", ws.concurrency, where, MAX_CONCURRENCY)),
        headers=_headers(raw.get("headers", {}), where),
    )


def endpoints_of(ws: WebhookSettings) -> dict[str, Endpoint]:
    """Endpoint name -> :class:`Endpoint`; :class:`ConfigError` on the first bad one."""
    out: dict[str, Endpoint] = {}
    for i, raw in enumerate(ws.endpoints):
        endpoint = parse_endpoint(raw, f"webhooks.endpoints[{i}]", ws)
        if endpoint.name in out:
            raise ConfigError(f"webhooks.endpoints[{i}]: duplicate endpoint {endpoint.name!r}")
        out[endpoint.name] = endpoint
    for name in ws.secrets:
        if name not in out:
            raise ConfigError(f"webhooks.secrets names {name!r}, which is not an endpoint")
    return out


def channels_of(settings: Settings) -> tuple[dict[str, Route], dict[str, Endpoint]]:
    """Every rule's channels and every endpoint, checked against each other.

    Raises :class:`ConfigError` for an invalid rule or endpoint, or a rule naming an
    endpoint that is not configured.
    """
    j = settings.journey
    try:
        routes = routes_by_rule(j.abandonment, j.followups)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    endpoints = endpoints_of(settings.webhooks)
    problems = unknown_endpoints(routes, endpoints)
    if problems:
        raise ConfigError("webhook channels: " + "; ".join(problems))
    return routes, endpoints
