"""docker-compose.yml and the Dockerfile read as data, to run their services without Docker.

The deployment test takes each service's command, environment, volumes and
health check from the files themselves, so the test and the files cannot drift.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}|\$\$")
_URL_PORT = re.compile(r"(https?://[^/:'\"\s]+:)(\d+)")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` of the compose file with VAR unset or empty."""


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, kind, arg = match.group(1), match.group(2), match.group(3)
        value = environ.get(name)
        if value:
            return value
        if kind == "?":
            raise MissingVariable(arg or f"{name} is required")
        return arg or ""

    return _VARIABLE.sub(expand, text)


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, environ)
    if isinstance(value, list):
        return [_expand(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, environ) for k, v in value.items()}
    return value


@dataclass
class Service:
    """One compose service: what the deployment test needs of it."""

    name: str
    spec: dict[str, Any]

    @property
    def command(self) -> list[str]:
        command = self.spec.get("command", [])
        return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {str(k): str(v) for k, v in env.items()}

    @property
    def volumes(self) -> list[tuple[str | None, str]]:
        """(host path or named volume, None for anonymous; container path)."""
        out: list[tuple[str | None, str]] = []
        for volume in self.spec.get("volumes") or []:
            parts = str(volume).split(":")
            out.append((None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
        return out

    @property
    def healthcheck(self) -> list[str]:
        """The health check's argv (``CMD`` form), or [] when there is none."""
        test = (self.spec.get("healthcheck") or {}).get("test") or []
        if isinstance(test, str):
            return ["sh", "-c", test]
        if test and test[0] == "CMD":
            return [str(t) for t in test[1:]]
        if test and test[0] == "CMD-SHELL":
            return ["sh", "-c", str(test[1])]
        return []

    @property
    def replicas(self) -> int:
        return int(self.spec.get("scale", 1))

    @property
    def depends_on(self) -> dict[str, str]:
        deps = self.spec.get("depends_on") or {}
        if isinstance(deps, list):
            return {d: "service_started" for d in deps}
        return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}

    def container_ports(self) -> set[int]:
        """Ports the service listens on inside its container.

        From its command (``--port``/``--web-port``), its ``JOURNEY_*_PORT``
        variables and its health check URL.
        """
        ports: set[int] = set()
        args = self.command
        for flag, value in itertools.pairwise(args):
            if flag.endswith("port") and value.isdigit():
                ports.add(int(value))
        for key, value in self.environment.items():
            if key.endswith("_PORT") and value.isdigit() and not key.startswith("JOURNEY_SMTP"):
                ports.add(int(value))
        for text in self.healthcheck:
            ports.update(int(m.group(2)) for m in _URL_PORT.finditer(text))
        return ports


@dataclass
class ComposeFile:
    services: dict[str, Service]
    environ: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls, path: Path = COMPOSE_FILE, environ: Mapping[str, str] | None = None
    ) -> ComposeFile:
        env = dict(os.environ if environ is None else environ)
        data = _expand(yaml.safe_load(path.read_text()), env)
        services = {name: Service(name, spec) for name, spec in data["services"].items()}
        return cls(services, env)

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def built_services(self) -> list[Service]:
        """The services that run the project's own image (``build: .``)."""
        return [s for s in self.services.values() if "build" in s.spec]


def image_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """``ENV`` values of the Dockerfile's final stage (``KEY=value`` pairs)."""
    stages = re.split(r"^FROM\s", dockerfile.read_text(), flags=re.M)
    env: dict[str, str] = {}
    for line in stages[-1].replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_workdir(dockerfile: Path = DOCKERFILE) -> str:
    """The final stage's last ``WORKDIR``."""
    stages = re.split(r"^FROM\s", dockerfile.read_text(), flags=re.M)
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", stages[-1], flags=re.M)
    return workdirs[-1] if workdirs else "/"


def map_paths(value: str, mounts: Mapping[str, Path]) -> str:
    """``value`` with every container path under a mount replaced by its host folder."""
    for container in sorted(mounts, key=len, reverse=True):
        if value == container or value.startswith(container.rstrip("/") + "/"):
            return str(mounts[container]) + value[len(container.rstrip("/")) :]
    return value


def map_ports(value: str, ports: Mapping[int, int]) -> str:
    """``value`` with container ports (as a whole value or in a URL) replaced by host ports."""
    if value.isdigit() and int(value) in ports:
        return str(ports[int(value)])
    return _URL_PORT.sub(lambda m: m.group(1) + str(ports.get(int(m.group(2)), m.group(2))), value)
