"""What the collector's HTTP endpoints share: JSON error answers and the publish interface.

The Segment endpoints (:mod:`stream.producers.collector`) and the email
tracking endpoints (:mod:`stream.producers.email_tracking`) are served by one
aiohttp app. Both refuse a request by raising :class:`Refusal`;
:func:`json_errors` turns it, and every other error, into a JSON answer and
counts it. Email tracking publishes through :class:`TouchpointPublisher`,
which the collector implements, so neither module imports the other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any, Protocol

import orjson
from aiohttp import web

from stream.contract import Touchpoint
from stream.observability import metrics

log = logging.getLogger(__name__)

#: Sent with 503: Segment's SDKs then hold the batch and retry without using up
#: their retry count, which suits a broker outage.
RETRY_AFTER_S = 5


class Middleware(Protocol):
    """An aiohttp middleware: the request and the next handler in, the answer out."""

    def __call__(self, request: web.Request, handler: Any) -> Awaitable[web.StreamResponse]: ...


class Refusal(Exception):
    """A request answered with an error status and a JSON reason."""

    def __init__(self, status: int, code: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.extra = extra

    def response(self) -> web.Response:
        # "code" and "message" are what Segment's SDKs read from an error body.
        body = {"success": False, "error": self.reason, "code": self.code, "message": self.reason}
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        return json_response(self.status, {**body, **self.extra}, headers)


class TouchpointPublisher(Protocol):
    """What an endpoint needs to send touchpoints on: the collector's publish path."""

    async def publish(self, touchpoints: Sequence[Touchpoint]) -> None:
        """Return once the broker acknowledged ``touchpoints``, else raise a 503 Refusal."""
        ...


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """``body`` as a JSON answer (orjson) with ``status`` and ``headers``."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def json_errors(
    known_paths: Collection[str], cors_headers: Mapping[str, str], cors_prefix: str
) -> Middleware:
    """The middleware answering every error as JSON (404 and 405 included).

    Each answer is counted by endpoint (the route, a path in ``known_paths``,
    else ``other``: a bounded label) and status; answers under ``cors_prefix``
    carry ``cors_headers``.
    """

    def endpoint_label(request: web.Request) -> str:
        resource = request.match_info.route.resource
        if resource is not None:
            return resource.canonical
        return request.path if request.path in known_paths else "other"

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        endpoint = endpoint_label(request)
        response: web.StreamResponse
        try:
            response = await handler(request)
        except Refusal as exc:
            response = exc.response()
        except web.HTTPException as exc:
            code = exc.reason.lower().replace(" ", "_")
            response = Refusal(exc.status, code, exc.reason).response()
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            response = Refusal(500, "internal_error", "internal error").response()
        metrics.COLLECTOR_REQUESTS.labels(endpoint=endpoint, status=str(response.status)).inc()
        if request.path.startswith(cors_prefix):
            response.headers.update(cors_headers)
        return response

    return middleware
