"""Shared fixtures: the real embedded stack (broker, Redis, SMTP catcher), started once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings
from tests.helpers import isolated_settings


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
