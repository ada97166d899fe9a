"""Run the engine's own services as child processes, the way production runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from stream.embedded import free_port
from stream.settings import Settings, to_environ
from tests.helpers import REPO as ROOT
from tests.helpers import wait_for


def metric_at(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples matching ``labels`` on ``url``/metrics (NaN: no answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{url}/metrics")
    if status != 200:
        return float("nan")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def http_get(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, Any]:
    """GET ``url`` and return (status, decoded JSON or text); (0, error) if unreachable.

    ``token`` goes as ``Authorization: Bearer`` (the worker's API).
    """
    return http_request("GET", url, timeout, token)


def http_request(
    method: str, url: str, timeout: float = 5.0, token: str | None = None
) -> tuple[int, Any]:
    """:func:`http_get` with another method."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers, method=method), timeout=timeout
        ) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return 0, str(exc)
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, body.decode(errors="replace")


class Service:
    """A ``journey`` subcommand in a child process with its log in a file."""

    def __init__(self, args: list[str], settings: Settings, log_path: Path, env: dict[str, str]):
        self.args = args
        self.settings = settings
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **to_environ(self.settings), **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", *self.args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` on this service's /metrics (NaN: down)."""
        return metric_at(self.url, name, **labels)

    def wait_ready(self, timeout: float = 90.0) -> Service:
        """Wait for ``GET {url}/ready`` to answer 200; fail with the log if it exits."""
        name = self.args[0]

        def probe() -> tuple[int, Any]:
            if not self.alive():
                raise AssertionError(f"{name} exited:\n{self.log_tail()}")
            return http_get(f"{self.url}/ready")

        try:
            wait_for(probe, lambda r: r[0] == 200, timeout_s=timeout, every_s=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {name} log ---\n{self.log_tail()}") from None
        return self


class Worker(Service):
    def __init__(self, settings: Settings, log_path: Path, web_port: int | None = None):
        self.web_port = web_port or free_port()
        settings = replace(settings, worker=replace(settings.worker, web_port=self.web_port))
        super().__init__(["worker", "--log-level", "info"], settings, log_path, {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def api(self, path: str, timeout: float = 5.0, method: str = "GET") -> tuple[int, Any]:
        """``path`` of this worker's HTTP API with an admin token of its settings."""
        token = next(
            (t for t, role in self.settings.worker.api_tokens.items() if role == "admin"), None
        )
        return http_request(method, f"{self.url}{path}", timeout=timeout, token=token)


class PrometheusServer:
    """A real Prometheus server (Debian's ``prometheus``) on a free loopback port.

    Runs with its own config and TSDB directory under ``workdir``, so a system
    Prometheus (if any) is never touched.
    """

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], interval_s: float = 1):
        import shutil

        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError(
                "prometheus is not installed: `apt-get install -y prometheus` (.ci/run does it)"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = {
            "global": {
                "scrape_interval": f"{interval_s}s",
                "evaluation_interval": f"{interval_s}s",
            },
            "scrape_configs": scrape_configs,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        from stream.embedded.stack import parent_death_hook

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        # JSON is YAML: Prometheus reads it as is.
        config.write_bytes(orjson.dumps(self.config, option=orjson.OPT_INDENT_2))
        self.log_path = self.workdir / "prometheus.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=parent_death_hook(),
            )

        def probe() -> int:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            return http_get(f"{self.url}/-/ready")[0]

        wait_for(probe, lambda status: status == 200, timeout_s=30, every_s=0.2)
        return self

    def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` at now: the decoded answer (``status``, ``data`` or ``error``)."""
        from urllib.parse import urlencode

        status, body = http_get(f"{self.url}/api/v1/query?{urlencode({'query': expr})}")
        if not isinstance(body, dict):
            return {"status": "error", "error": f"HTTP {status}: {body}"}
        return body

    def targets(self) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v1/targets")
        return list(body["data"]["activeTargets"]) if status == 200 else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dispatch_settings(
    settings: Settings, redis_url: str, smtp_port: int, **dispatch: Any
) -> Settings:
    d = {
        "key_prefix": f"test-{settings.worker.app_id}:",
        "web_port": free_port(),
        "quiet_start": "00:00",
        "quiet_end": "00:00",
        "max_attempts": 3,
        "retry_backoff_s": 0.1,
        "retry_backoff_max_s": 0.5,
        "schedule_poll_s": 0.3,
        "signal_wait_s": 5.0,
        "recheck_delay_s": 1.0,
        "shop_base_url": "https://shop.example.com",
        "tracking_base_url": "http://collector.test",
        "tracking_secret": "test-secret",
        **dispatch,
    }
    return replace(
        settings,
        redis=replace(settings.redis, url=redis_url),
        smtp=replace(settings.smtp, host="127.0.0.1", port=smtp_port),
        dispatch=replace(settings.dispatch, **d),
    )


class Dispatcher(Service):
    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(["dispatcher", "--log-level", "info"], settings, log_path, {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.dispatch.web_port}"
