"""The MIME message of a follow-up: addresses, tracking headers, text + HTML."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from stream.dispatch.links import TrackingLinks
from stream.dispatch.render import RenderedEmail
from stream.triggers.trigger import Trigger

TRIGGER_ID_HEADER = "X-Journey-Trigger-Id"
#: Long header values (the unsubscribe URL) stay on one line, unencoded, as mail
#: clients expect of List-Unsubscribe (RFC 5322 allows 998 characters).
POLICY = policy.default.clone(max_line_length=998)
RULE_HEADER = "X-Journey-Rule"


def message_id(trigger: Trigger, sender: str) -> str:
    """Deterministic Message-ID: a re-send of the same trigger is recognisably the same mail."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "journey.invalid"
    return f"<{trigger.trigger_id}@{domain}>"


def build_message(
    trigger: Trigger, rendered: RenderedEmail, links: TrackingLinks, sender: str, now_ms: int
) -> EmailMessage:
    """A multipart/alternative message to ``trigger.email`` with one-click unsubscribe."""
    if not trigger.email:
        raise ValueError("trigger has no email address")
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    if trigger.first_name:
        user, _, domain = trigger.email.partition("@")
        msg["To"] = Address(display_name=trigger.first_name, username=user, domain=domain)
    else:
        msg["To"] = trigger.email
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now_ms / 1000, tz=UTC))
    msg["Message-ID"] = message_id(trigger, sender)
    msg[TRIGGER_ID_HEADER] = trigger.trigger_id
    msg[RULE_HEADER] = trigger.rule
    # RFC 2369 + RFC 8058: mail clients show an unsubscribe button that POSTs here.
    msg["List-Unsubscribe"] = f"<{links.unsubscribe}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg
