"""The MIME message of a follow-up: addresses, tracking headers, text + HTML.

Built on the ``compat32`` policy: headers set as text are not parsed into
trees, which makes a message about four times cheaper to build and flatten
than with ``email.policy.default`` (the largest CPU cost of a send). What a
reader decodes is the same: non-ASCII subjects and names are RFC 2047 words,
both bodies UTF-8 in quoted-printable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import charset, policy
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime, formataddr, parseaddr

from stream.dispatch.links import TrackingLinks
from stream.dispatch.render import RenderedEmail
from stream.triggers.trigger import Trigger

TRIGGER_ID_HEADER = "X-Journey-Trigger-Id"
#: Long header values (the unsubscribe URL) stay on one line, unencoded, as mail
#: clients expect of List-Unsubscribe (RFC 5322 allows 998 characters).
POLICY = policy.compat32.clone(max_line_length=998)
RULE_HEADER = "X-Journey-Rule"
_UTF8_QP = charset.Charset("utf-8")
_UTF8_QP.body_encoding = charset.QP


def message_id(trigger: Trigger, sender: str) -> str:
    """Deterministic Message-ID: a re-send of the same trigger is recognisably the same mail."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "journey.invalid"
    return f"<{trigger.trigger_id}@{domain}>"


def _text(value: str) -> str | Header:
    return value if value.isascii() else Header(value, "utf-8")


def build_message(
    trigger: Trigger, rendered: RenderedEmail, links: TrackingLinks, sender: str, now_ms: int
) -> Message:
    """A multipart/alternative message to ``trigger.email`` with one-click unsubscribe."""
    if not trigger.email:
        raise ValueError("trigger has no email address")
    msg = MIMEMultipart("alternative", policy=POLICY)
    msg["From"] = sender
    if trigger.first_name:
        msg["To"] = formataddr((trigger.first_name, trigger.email))
    else:
        msg["To"] = trigger.email
    msg["Subject"] = _text(rendered.subject)  # type: ignore[assignment]  # compat32 takes Header
    msg["Date"] = format_datetime(datetime.fromtimestamp(now_ms / 1000, tz=UTC))
    msg["Message-ID"] = message_id(trigger, sender)
    msg[TRIGGER_ID_HEADER] = trigger.trigger_id
    msg[RULE_HEADER] = trigger.rule
    # RFC 2369 + RFC 8058: mail clients show an unsubscribe button that POSTs here.
    msg["List-Unsubscribe"] = f"<{links.unsubscribe}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.attach(_part(rendered.text, "plain"))
    msg.attach(_part(rendered.html, "html"))
    return msg


def _part(text: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype, policy=POLICY)
    part.set_payload(text, _UTF8_QP)
    return part
