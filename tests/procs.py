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
from stream.settings import ROOT, Settings, to_environ
from tests.helpers import wait_for


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url`` and return (status, decoded JSON or text); (0, error) if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
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


class Worker(Service):
    def __init__(self, settings: Settings, log_path: Path, web_port: int | None = None):
        self.web_port = web_port or free_port()
        settings = replace(settings, worker=replace(settings.worker, web_port=self.web_port))
        super().__init__(["worker", "--loglevel", "info"], settings, log_path, {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        def probe() -> tuple[int, Any]:
            if not self.alive():
                raise AssertionError(f"worker exited:\n{self.log_tail()}")
            return http_get(f"{self.url}/ready")

        try:
            wait_for(probe, lambda r: r[0] == 200, timeout_s=timeout, every_s=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log_tail()}") from None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` on this worker's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = http_get(f"{self.url}/metrics")
        if status != 200:
            return float("nan")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total
