"""Child processes of the embedded stack: started and stopped with deadlines, never orphaned.

:class:`ChildProcess` starts a server as a child with a log file, waits until
it answers, and stops it (SIGTERM, then SIGKILL) from ``stop()`` or an
``atexit`` hook; on Linux the child also receives SIGTERM when the thread
that started it dies (``PR_SET_PDEATHSIG``), so nothing is left running after
Ctrl-C, a crash or a test session. Start children from a long-lived thread
(normally the main thread): Linux delivers the parent-death signal when the
*spawning thread* exits, so a child started from a short-lived worker thread
would be terminated with that thread.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from stream.embedded.wait import wait_until

_PR_SET_PDEATHSIG = 1


# An auto-chosen port can be taken between free_port() and the child binding it.
PORT_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bind to port 0, return what we got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` (0.2 s timeout)."""
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


class ChildProcess:
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
        for attempt in range(PORT_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(timeout)
                return
            except _ExitedEarly:
                if not self._auto_port or attempt == PORT_ATTEMPTS - 1:
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
