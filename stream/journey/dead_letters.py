"""Dead letters of the journey agent: a journey (or a message) it could not take, with why."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from stream import contract, dlq
from stream.contract import InvalidTouchpoint, Touchpoint

log = logging.getLogger(__name__)


async def send(
    shell: Any,
    exc: Exception,
    value: Callable[[], bytes] | None,
    message: Any,
    what: str,
    extra: dict[str, bytes] | None = None,
) -> None:
    """Dead-letter what a failed step held (``value``; None: the whole message), with why.

    A broken rule of the contract (a state over its size limit) is a
    rejection; anything else an error, counted and logged.
    """
    if isinstance(exc, InvalidTouchpoint):
        reason, label = exc.reason, contract.reason_label(exc.field, exc.limit)
        log.warning("journey: %s dead-lettered: %s", what, reason)
    else:
        dlq.log_failure("journey", message, exc, what)
        reason, label = dlq.error_reason(exc), dlq.ERROR_LABEL
    raw = message.value or b""
    if value is not None:
        with contextlib.suppress(Exception):
            raw = value()
    head = dlq.headers(reason, message, "journey", extra=extra)
    await dlq.send(shell.topics.dlq, raw, head, shell.limits, label)


def encoded_groups(key: str, segments: list[list[Touchpoint]]) -> bytes:
    """A failed journey's touchpoints as a ``touchpoints.resolved`` value."""
    tps = [tp for seg in segments for tp in seg]
    try:
        return contract.dumps_groups([(key, tps)])
    except Exception:
        return contract.encode_rejected([[key, [tp.to_dict() for tp in tps]]])


def encoded_check(wm: int, key: str) -> bytes:
    """A failed journey's check as a ``journey.timers`` value."""
    return orjson.dumps({"watermark": wm, "keys": [key]})


def provenance(key: str, messages: list[Any]) -> dict[str, bytes]:
    """Headers naming the journey and every message its touchpoints came in."""
    out = {"journey_key": key.encode()}
    if len(messages) > 1:
        out["source_offsets"] = ",".join(str(m.offset) for m in messages[:100]).encode()
    return out
