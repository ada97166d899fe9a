"""Secrets and access: bearer tokens for the worker's HTTP API, and no default secrets.

Who may read what on the worker's HTTP API: bearer tokens with a role each.

Tokens are configured like the collector's write keys (``worker.api_tokens``:
token -> role). ``read`` tokens see counts only (the funnel, the journey map);
``admin`` tokens also see and erase one customer's data. Health, readiness
and metrics stay open: supervisors and Prometheus scrape them on the internal
port. Every other path needs ``admin``, so a view added later is closed until
it is given a role here.

Outside the embedded stack (``security.allow_default_secrets`` off) a service
refuses to start with an empty or packaged default secret it uses: the
tracking-link key, the Redis password, the collector's write keys, an API
token, a webhook endpoint's signing secret (:func:`require_secrets`).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from stream.defaults import ConfigError
from stream.settings import Settings, redis_password

READ = "read"
ADMIN = "admin"
ROLES = (READ, ADMIN)

#: Paths anyone may GET (liveness, readiness, Prometheus).
OPEN_PATHS = frozenset({"/live", "/ready", "/metrics", "/health"})
#: Files the pages load (the vendored ECharts): public code, no data.
STATIC_PREFIX = "/static/"
#: Paths a ``read`` token may use: aggregates, never one customer's data.
READ_PATHS = re.compile(
    r"^/(funnel|funnel/local|journey-map|journey-map/local|map|followups|followups/local)/?$"
)


class AccessError(ConfigError):
    """The configured tokens are unusable (unknown role, empty token)."""


def check_tokens(tokens: Mapping[str, str]) -> dict[str, str]:
    """``tokens`` (token -> role) validated; raises :class:`AccessError` naming the problem."""
    out: dict[str, str] = {}
    for token, role in tokens.items():
        if not token.strip():
            raise AccessError("worker.api_tokens has an empty token")
        if role not in ROLES:
            raise AccessError(f"worker.api_tokens: role {role!r} is not one of {', '.join(ROLES)}")
        out[token] = role
    return out


def required_role(method: str, path: str) -> str | None:
    """The role a request needs (None: open to anyone)."""
    if method in ("GET", "HEAD") and (path in OPEN_PATHS or path.startswith(STATIC_PREFIX)):
        return None
    if method in ("GET", "HEAD") and READ_PATHS.match(path):
        return READ
    return ADMIN


def role_of(token: str | None, tokens: Mapping[str, str]) -> str | None:
    """The role of ``token`` (compared in constant time), or None."""
    if not token:
        return None
    found = None
    for known, role in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = role
    return found


def allows(granted: str | None, needed: str | None) -> bool:
    if needed is None:
        return True
    return granted in (ADMIN, needed)


def request_token(request: web.Request) -> str | None:
    """``Authorization: Bearer T``, else ``?token=T`` (pages opened in a browser)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(
    tokens: Mapping[str, str],
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware answering 401 (no or unknown token) or 403 (role too low)."""
    known = check_tokens(tokens)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = required_role(request.method, request.path)
        if needed is not None:
            granted = role_of(request_token(request), known)
            if granted is None:
                return web.json_response(
                    {"error": "a bearer token is required (worker.api_tokens)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="journey"'},
                )
            if not allows(granted, needed):
                return web.json_response(
                    {"error": f"this needs a token with the {needed!r} role"}, status=403
                )
        return await handler(request)

    return guard


def forward_headers(request: Any) -> dict[str, str]:
    """The caller's credentials, for a request this worker makes to another on its behalf.

    ``request`` is an aiohttp request, or Faust's wrapper of one.
    """
    header = request.headers.get("Authorization")
    if header:
        return {"Authorization": header}
    token = request.query.get("token")
    return {"Authorization": f"Bearer {token}"} if token else {}


#: Values shipped as placeholders: in the packaged settings and in docker-compose.yml.
DEFAULT_SECRETS = frozenset({"", "change-me", "changeme", "demo-write-key", "secret"})


def _tracking_secret(settings: Settings) -> str | None:
    if settings.dispatch.tracking_secret in DEFAULT_SECRETS:
        return "is empty or the packaged default: set a long random key"
    return None


def _redis_password(settings: Settings) -> str | None:
    if (redis_password(settings.redis.url) or "") in DEFAULT_SECRETS:
        return "has no password or the default one: give Redis one (redis://:PASSWORD@host/0)"
    return None


def _write_keys(settings: Settings) -> str | None:
    keys = settings.collector.write_keys
    if not keys or any(k in DEFAULT_SECRETS for k in keys):
        return "is empty or holds the demo key: set your own write keys"
    return None


def _api_tokens(settings: Settings) -> str | None:
    if any(t in DEFAULT_SECRETS for t in settings.worker.api_tokens):
        return "holds a default token: set long random tokens"
    return None


def _webhook_secrets(settings: Settings) -> str | None:
    w = settings.webhooks
    secrets = {str(e.get("name")): str(e.get("secret") or "") for e in w.endpoints}
    secrets.update(w.secrets)
    weak = sorted(name for name, secret in secrets.items() if secret in DEFAULT_SECRETS)
    if weak:
        return f"leaves webhook endpoint(s) {', '.join(weak)} without a real secret"
    return None


_CHECKS = {
    "JOURNEY_DISPATCH_TRACKING_SECRET": _tracking_secret,
    "JOURNEY_REDIS_URL": _redis_password,
    "JOURNEY_COLLECTOR_WRITE_KEYS": _write_keys,
    "JOURNEY_WORKER_API_TOKENS": _api_tokens,
    "JOURNEY_WEBHOOKS_SECRETS": _webhook_secrets,
}

#: The secrets each service uses, by the variable that sets them.
SERVICE_SECRETS = {
    "worker": ("JOURNEY_WORKER_API_TOKENS",),
    "collector": ("JOURNEY_COLLECTOR_WRITE_KEYS", "JOURNEY_DISPATCH_TRACKING_SECRET"),
    "dispatcher": (
        "JOURNEY_DISPATCH_TRACKING_SECRET",
        "JOURNEY_REDIS_URL",
        "JOURNEY_WEBHOOKS_SECRETS",
    ),
    "suppress": ("JOURNEY_REDIS_URL",),
}


def insecure_secrets(settings: Settings, service: str) -> list[str]:
    """Why ``service`` must not start with ``settings``: one line per secret, naming its
    variable. Empty when every secret it uses is set to something of the operator's."""
    problems = []
    for var in SERVICE_SECRETS.get(service, ()):
        problem = _CHECKS[var](settings)
        if problem is not None:
            problems.append(f"{var} {problem}")
    return problems


def require_secrets(settings: Settings, service: str) -> None:
    """Raise :class:`ConfigError` when ``service`` would run with default secrets.

    The embedded stack and the tests set ``security.allow_default_secrets``.
    """
    if settings.security.allow_default_secrets:
        return
    problems = insecure_secrets(settings, service)
    if problems:
        raise ConfigError(
            f"journey {service} refuses to start with default secrets "
            "(JOURNEY_SECURITY_ALLOW_DEFAULT_SECRETS=true only on a test machine):\n  "
            + "\n  ".join(problems)
        )
