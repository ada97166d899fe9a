"""Sending through an SMTP relay with aiosmtplib (STARTTLS, implicit TLS, auth from settings).

Connections are kept open between messages (at most ``pool_size`` idle), one
message at a time on each, so concurrent sends do not pay a connection, a
greeting and a QUIT per message. A kept connection the relay has closed
meanwhile is replaced before use; a failure closes the connection and is a
:class:`SendError` for the dispatcher to retry.
"""

from __future__ import annotations

import socket
from email.message import Message
from email.utils import getaddresses, parseaddr

import aiosmtplib

from stream.settings import SmtpSettings


class SendError(RuntimeError):
    """The relay did not accept the message (worth retrying)."""


class SmtpSender:
    def __init__(self, smtp: SmtpSettings, timeout_s: float, pool_size: int = 1) -> None:
        self.smtp = smtp
        self.timeout_s = timeout_s
        self.pool_size = max(1, pool_size)
        self._idle: list[aiosmtplib.SMTP] = []
        # Once: aiosmtplib would look the name up per connection, blocking the event loop.
        self.local_hostname = socket.getfqdn()

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.smtp
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username or None,
            password=s.password or None,
            use_tls=s.ssl,
            start_tls=s.starttls,
            timeout=self.timeout_s,
            local_hostname=self.local_hostname,
        )
        await client.connect()
        return client

    async def send(self, message: Message) -> None:
        """Return once the relay accepted ``message``; :class:`SendError` otherwise."""
        s = self.smtp
        # Flattened with the message's own policy: aiosmtplib's would fold and
        # RFC 2047-encode the long List-Unsubscribe URL, which clients then ignore.
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        sender = parseaddr(str(message["From"]))[1]
        recipients = [addr for _, addr in getaddresses(message.get_all("To", []))]
        client = self._idle.pop() if self._idle else None
        if client is not None and not client.is_connected:
            client.close()  # closed by the relay while idle
            client = None
        try:
            if client is None:
                client = await self._connect()
            await client.sendmail(sender, recipients, data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if client is not None:
                client.close()
            raise SendError(f"SMTP {s.host}:{s.port}: {exc!r}") from exc
        except BaseException:
            if client is not None:
                client.close()
            raise
        if len(self._idle) < self.pool_size:
            self._idle.append(client)
        else:
            client.close()

    async def close(self) -> None:
        """Say goodbye on every idle connection (best effort)."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
