"""The package as users get it: a wheel built from this checkout, installed non-editable.

Installed into a fresh virtualenv outside the repository, as the Dockerfile
installs it, so a test can run ``journey`` from any folder and see only what
the wheel carries (its packaged defaults included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of this checkout into ``out``; returns the wheel's path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("journey_stream-*.whl")
    return wheel


@dataclass(frozen=True)
class InstalledPackage:
    """A virtualenv holding the installed wheel."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def journey(self) -> str:
        return str(self.bin / "journey")

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment: this venv first on PATH, no JOURNEY_* from the caller."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("JOURNEY_", "PYTHON"))}
        keep.pop("VIRTUAL_ENV", None)
        return {**keep, "PATH": f"{self.bin}{os.pathsep}{keep.get('PATH', '')}", **(extra or {})}

    def run(self, *args: str, cwd: Path, timeout: float = 120, **kw: object) -> str:
        """``journey ARGS`` in ``cwd``; returns stdout, raises with the output on failure."""
        proc = subprocess.run(
            [self.journey, *args],
            cwd=cwd,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"journey {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}"
            )
        return proc.stdout


def install(wheel: Path, root: Path, extras: str = "") -> InstalledPackage:
    """A fresh virtualenv at ``root`` with ``wheel`` (and its ``extras``) installed."""
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    target = f"{wheel}[{extras}]" if extras else str(wheel)
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "-q", target],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return InstalledPackage(root)
