"""The embedded stack: a Kafka-compatible broker, Redis and an SMTP catcher on loopback.

:class:`EmbeddedStack` starts the parts in that order, stops them in reverse
(by ``stop()``, as a context manager, or at exit) and hands out the
environment pointing the engine's processes at them. Broker and Redis run as
child processes of the caller (see :mod:`stream.embedded.process`); the SMTP
catcher runs in a daemon thread of the caller. The parts' names are
importable from here too.
"""

from __future__ import annotations

import atexit
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

from stream.embedded.broker import EmbeddedBroker
from stream.embedded.process import free_port, parent_death_hook
from stream.embedded.redis_server import EmbeddedRedis, redis_server_binary
from stream.embedded.smtp_catcher import CaughtMail, SmtpCatcher

__all__ = [
    "CaughtMail",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedStack",
    "SmtpCatcher",
    "free_port",
    "parent_death_hook",
    "redis_server_binary",
]


class EmbeddedStack:
    """Broker, Redis and SMTP catcher together; a context manager.

    ``start()`` starts them in that order and ``stop()`` stops them in reverse,
    carrying on past a failing part and raising the first failure at the end.
    """

    def __init__(
        self,
        workdir: Path,
        with_redis: bool = True,
        with_smtp: bool = True,
        redis_password: str = "",
    ) -> None:
        self.workdir = workdir
        self.broker = EmbeddedBroker(log_path=workdir / "broker.log")
        self.redis = (
            EmbeddedRedis(dir=workdir / "redis", password=redis_password) if with_redis else None
        )
        self.smtp = SmtpCatcher(workdir / "mail") if with_smtp else None
        #: An admin token of the worker's HTTP API, new for every stack.
        self.api_token = secrets.token_urlsafe(18)
        self._atexit_registered = False

    def start(self) -> EmbeddedStack:
        """Start every part; on failure stop what was started and re-raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self._stop_quietly)
            self._atexit_registered = True
        try:
            self.broker.start()
            if self.redis:
                self.redis.start()
            if self.smtp:
                self.smtp.start()
        except BaseException as exc:
            self._stop_quietly(exc)
            raise
        return self

    def stop(self) -> None:
        """Stop every part in reverse start order; raise the first error afterwards."""
        errors: list[Exception] = []
        for part in (self.smtp, self.redis, self.broker):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # the remaining parts must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]

    def _stop_quietly(self, cause: BaseException | None = None) -> None:
        try:
            self.stop()
        except Exception as exc:
            if cause is not None:
                cause.add_note(f"also, stopping the embedded stack failed: {exc!r}")

    def env(self) -> dict[str, str]:
        """Environment variables pointing child processes at this stack."""
        out = {
            "JOURNEY_BROKER_URL": self.broker.url,
            # Tansu under-reports end offsets after batched writes; see WorkerSettings.
            "JOURNEY_WORKER_RECOVERY_CONSISTENCY_CHECK": "false",
            "JOURNEY_WORKER_API_TOKENS": f"{self.api_token}=admin",
            # Loopback only, for a trial: the packaged demo secrets are fine here.
            "JOURNEY_SECURITY_ALLOW_DEFAULT_SECRETS": "true",
        }
        if self.redis:
            out["JOURNEY_REDIS_URL"] = self.redis.url
        if self.smtp:
            out["JOURNEY_SMTP_HOST"] = self.smtp.host
            out["JOURNEY_SMTP_PORT"] = str(self.smtp.port)
        return out

    def describe(self) -> dict[str, Any]:
        """Where each part listens, for people and for ``var/stack.json``."""
        return {
            "broker_url": self.broker.url,
            "redis_url": self.redis.url if self.redis else None,
            "smtp": f"{self.smtp.host}:{self.smtp.port}" if self.smtp else None,
            "mail_folder": str(self.smtp.maildir) if self.smtp else None,
            "api_token": self.api_token,
            "environment": self.env(),
        }

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
        else:
            # Do not let a stop failure hide the exception that ended the block.
            self._stop_quietly(exc)
