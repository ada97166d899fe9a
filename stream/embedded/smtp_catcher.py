"""The SMTP catcher: an aiosmtpd server on loopback writing every message to a file."""

from __future__ import annotations

import atexit
import email
import email.policy
import logging
import os
import re
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from stream.embedded.process import PORT_ATTEMPTS, free_port


@dataclass(frozen=True)
class CaughtMail:
    """One message received by the SMTP catcher, with its envelope and .eml file."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: tuple[str, ...]
    path: Path


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9@._+-]+")


class SmtpCatcher:
    """An aiosmtpd server in a daemon thread, writing every message as a .eml file.

    Files are ``NNNNNN-<message-id>.eml`` in ``maildir`` (counter first, so the
    names sort in arrival order), each written to a temporary name and renamed,
    so a reader never sees half a message. ``messages`` (parsed with
    ``email.policy.default``), ``envelopes`` and ``caught`` grow together, in
    arrival order, after the file is in place.
    """

    def __init__(self, maildir: Path, port: int | None = None) -> None:
        self.maildir = maildir
        self._auto_port = port is None
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[dict[str, Any]] = []
        self.caught: list[CaughtMail] = []
        self._lock = threading.Lock()
        self._count = 0
        self._controller: Any = None
        self._atexit_registered = False

    @property
    def host(self) -> str:
        """The address the catcher listens on."""
        return "127.0.0.1"

    @property
    def running(self) -> bool:
        """True while the SMTP server thread is serving."""
        return self._controller is not None

    def start(self) -> SmtpCatcher:
        """Start serving; returns once the server accepts connections."""
        from aiosmtpd.controller import Controller

        # aiosmtpd logs every SMTP command at INFO; the .eml files say what arrived.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

        if self._controller is not None:
            return self
        self.maildir.mkdir(parents=True, exist_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            controller = Controller(self, hostname=self.host, port=self.port, enable_SMTPUTF8=True)
            try:
                controller.start()
                break
            except OSError:
                # An auto-chosen port taken between free_port() and the bind: another.
                if not self._auto_port or attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        self._controller = controller
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        return self

    def received(self) -> list[CaughtMail]:
        """A snapshot of everything received so far, in arrival order."""
        with self._lock:
            return list(self.caught)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: store one message."""
        data: bytes = envelope.original_content or envelope.content
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self._count += 1
            n = self._count
        msgid = _UNSAFE_FILENAME.sub("_", str(msg.get("Message-ID", "")).strip().strip("<>"))
        final = self.maildir / f"{n:06d}-{msgid[:80] or 'message'}.eml"
        tmp = self.maildir / f".{final.name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, final)
        mail = CaughtMail(msg, str(envelope.mail_from), tuple(envelope.rcpt_tos), final)
        with self._lock:
            self.messages.append(msg)
            self.envelopes.append({"from": mail.mail_from, "to": list(mail.rcpt_tos)})
            self.caught.append(mail)
        return "250 Message accepted for delivery"

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
