"""Sending through an SMTP relay with aiosmtplib (STARTTLS, implicit TLS, auth from settings)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import getaddresses, parseaddr

import aiosmtplib

from stream.settings import SmtpSettings


class SendError(RuntimeError):
    """The relay did not accept the message (worth retrying)."""


class SmtpSender:
    def __init__(self, smtp: SmtpSettings, timeout_s: float) -> None:
        self.smtp = smtp
        self.timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> None:
        """Return once the relay accepted ``message``; :class:`SendError` otherwise."""
        s = self.smtp
        # Flattened with the message's own policy: aiosmtplib's would fold and
        # RFC 2047-encode the long List-Unsubscribe URL, which clients then ignore.
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        sender = parseaddr(str(message["From"]))[1]
        recipients = [addr for _, addr in getaddresses(message.get_all("To", []))]
        try:
            await aiosmtplib.send(
                data,
                sender=sender,
                recipients=recipients,
                hostname=s.host,
                port=s.port,
                username=s.username or None,
                password=s.password or None,
                use_tls=s.ssl,
                start_tls=s.starttls,
                timeout=self.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(f"SMTP {s.host}:{s.port}: {exc!r}") from exc
