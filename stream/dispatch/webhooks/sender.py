"""One webhook request with aiohttp: signed POST, classified result, never an exception."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from stream.dispatch.webhooks import retry, signing
from stream.dispatch.webhooks.endpoints import Endpoint

USER_AGENT = "journey-webhooks/1"
#: Bytes of an error answer kept for the reason (logs, dead letters).
DETAIL_BYTES = 200


class WebhookSender:
    """Posts bodies to endpoints over one connection pool (opened on first use)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Concurrency is limited per endpoint by the caller, not by the pool.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def post(
        self, endpoint: Endpoint, body: bytes, trigger_id: str, attempt: int
    ) -> retry.Attempt:
        """POST ``body`` signed now; the result (status or error), whatever happened."""
        headers = {
            **dict(endpoint.headers),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            signing.IDEMPOTENCY_HEADER: trigger_id,
            signing.HEADER: signing.signature(endpoint.secret, int(self.clock()), body),
            "Journey-Attempt": str(attempt),
        }
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s)
        try:
            async with self._client().post(
                endpoint.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                detail = ""
                if response.status >= 300:
                    raw = await response.content.read(DETAIL_BYTES)
                    detail = raw.decode(errors="replace").strip()
                return retry.Attempt(
                    status=response.status,
                    retry_after=response.headers.get("Retry-After"),
                    detail=detail,
                )
        except TimeoutError:
            return retry.Attempt(error=retry.TIMEOUT, detail=f"no answer in {endpoint.timeout_s}s")
        except (aiohttp.ClientError, OSError) as exc:
            return retry.Attempt(error=retry.CONNECTION_ERROR, detail=repr(exc)[:DETAIL_BYTES])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
