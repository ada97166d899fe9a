"""Why an input is not a touchpoint: :class:`InvalidTouchpoint`, its label and its text.

Every check of the contract raises :class:`InvalidTouchpoint` with a reason a
person can act on; :func:`reason_label` turns it into a bounded metrics label
and :func:`reason_text` cuts it for headers, logs and HTTP answers.
"""

from __future__ import annotations

#: Reasons are cut to this length wherever they are carried (headers, HTTP answers).
MAX_REASON_CHARS = 1000


#: What :attr:`InvalidTouchpoint.limit` may name (a bounded metrics label).
LIMITS = frozenset(
    {
        "depth",
        "string",
        "key",
        "keys",
        "items",
        "number",
        "type",
        "event_size",
        "message_size",
        "event_time",
        "state_size",
    }
)


class InvalidTouchpoint(ValueError):
    """Raised by :func:`~stream.contract.parse` and every check of the contract, with a
    precise, human-readable reason.

    ``field`` names the offending field when there is one; ``limit`` (one of
    :data:`LIMITS`) says which input limit was passed, if that is the problem.
    """

    def __init__(
        self, reason: str, field_name: str | None = None, limit: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field_name
        self.limit = limit


def reason_label(field_name: str | None, limit: str | None) -> str:
    """The bounded metrics label of a rejection: ``limit_<limit>``, ``invalid_<field>``
    (fields are named by the code, never by the input) or ``malformed``."""
    if limit is not None:
        return f"limit_{limit}" if limit in LIMITS else "limit_other"
    return f"invalid_{field_name}" if field_name else "malformed"


def reason_text(reason: str) -> str:
    """A reason cut to :data:`MAX_REASON_CHARS` (headers, logs, HTTP answers)."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."
