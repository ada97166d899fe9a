"""A collector request's body: read within its size limit, un-gzipped, decoded as JSON.

The size limit applies to what the body inflates to, read in chunks, so a
small gzip bomb or an endless body costs at most the limit. Anything wrong is
a :class:`~stream.producers.http.Refusal` (413, 415, 400, or 401 when the body
was the only place a write key could be).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiohttp import web

from stream.producers.http import Refusal

READ_CHUNK_BYTES = 64 * 1024


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes after gzip decompression, else 413."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise Refusal(415, "unsupported_encoding", f"Content-Encoding {encoding!r} not supported")
    body = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    if encoding != "gzip":
        return bytes(body)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(bytes(body), limit + 1)
    except zlib.error as exc:
        raise Refusal(400, "invalid_request", f"body is not valid gzip: {exc}") from None
    if len(data) > limit:
        raise _too_large(len(data), limit, "decompressed ")
    if not inflater.eof or inflater.unused_data:
        raise Refusal(400, "invalid_request", "gzip body is truncated or has trailing data")
    return data


def _too_large(size: int, limit: int, what: str = "") -> Refusal:
    return Refusal(
        413, "payload_too_large", f"{what}body is over the {limit}-byte limit ({size}+ bytes)"
    )


def decode(body: bytes, *, authenticated: bool) -> dict[str, Any]:
    """The body's JSON object; a Refusal otherwise (401 if ``authenticated`` is False)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        problem = f"body is not valid JSON: {exc}"
    else:
        if isinstance(data, dict):
            return data
        problem = f"body must be a JSON object, got {type(data).__name__}"
    if not authenticated:
        # Without a Basic header the write key can only be in the body.
        raise Refusal(
            401, "unauthorized", f"missing write key: no Authorization header and {problem}"
        )
    raise Refusal(400, "invalid_request", problem)
