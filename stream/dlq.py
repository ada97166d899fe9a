"""Dead letters: what the agents could not take, on ``journey.dlq`` with the reason.

A dead letter's value is the rejected bytes, cut to ``[limits] dead_letter_bytes``
(see ``contract.dead_letter``: the original's size and SHA-256 then travel in
headers), so sending one can never fail for size. Its headers say why
(``reason``), where (``stage``: ``ingest``, ``links``, ``journey``) and what
it came from (``source_topic``, ``source_partition``, ``source_offset``, and
``index`` for an element of an array).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stream import contract
from stream.observability import metrics as m
from stream.settings import LimitsSettings

log = logging.getLogger(__name__)

#: The metrics label of a record an agent failed on in an unexpected way.
ERROR_LABEL = "error"


def headers(
    reason: str,
    message: Any,
    stage: str,
    index: int | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Headers of a dead letter of ``message`` (a Faust message) rejected at ``stage``."""
    out = {
        "reason": contract.reason_text(reason).encode(errors="replace"),
        "stage": stage.encode(),
        "source_topic": str(message.topic).encode(),
        "source_partition": str(message.partition).encode(),
        "source_offset": str(message.offset).encode(),
    }
    if index is not None:
        out["index"] = str(index).encode()
    if extra:
        out.update(extra)
    return out


async def send(
    topic: Any,
    raw: bytes,
    head: dict[str, bytes],
    limits: LimitsSettings,
    label: str,
    key: bytes | None = None,
) -> None:
    """Send ``raw`` (cut to ``limits.dead_letter_bytes``) to the dead-letter ``topic``,
    counted by ``label`` (a bounded reason, see ``contract.reason_label``)."""
    value, cut = contract.dead_letter(raw, limits.dead_letter_bytes)
    m.DLQ.labels(reason=label).inc()
    await topic.send(key=key, value=value, headers={**head, **cut})


def error_reason(exc: BaseException) -> str:
    """The reason of a dead letter for an unexpected exception."""
    return contract.reason_text(f"{type(exc).__name__}: {exc}")


def log_failure(agent: str, message: Any, exc: BaseException, what: str = "record") -> None:
    """Log and count a record (or part of one) ``agent`` failed on and dead-letters."""
    m.AGENT_ERRORS.labels(agent=agent).inc()
    log.error(
        "%s: %s %s[%s]@%s failed and goes to the dead-letter topic: %s",
        agent,
        what,
        message.topic,
        message.partition,
        message.offset,
        error_reason(exc),
        exc_info=exc,
    )
