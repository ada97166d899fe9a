"""Where the engine works around Faust and aiokafka: one module per upstream concern.

Nothing here is applied on import. A service calls :func:`patch_all` with the
patches it needs, once at start (the worker: all of them; the dispatcher: the
consumer and producer ones), after :func:`check_versions` refused any
upstream version the patches were not checked against. Patches read their
settings from the app (``app.journey_ext``, an :class:`ExtOptions`), never from
the first caller; applying twice changes nothing; tests undo them with
:func:`undo_all`.

Extension points are used where Faust has them: the RocksDB store is a store
class of its own (:mod:`.store`, registered as ``journeydb://``) and the
Prometheus monitor a monitor subclass (:mod:`.monitor`). Every concern is
described in docs/faust-internals.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from stream.faust_ext import (
    fetch_wait,
    offset_gaps,
    producer_flush,
    recovery,
    seek_flow,
    seek_uncommitted,
    store,
)
from stream.faust_ext._patch import Patch

#: The upstream versions every patch was checked against: [lowest, first not checked).
CHECKED_VERSIONS = {
    "faust-streaming": ((0, 15, 3), (0, 16)),
    "aiokafka": ((0, 14, 0), (0, 15)),
}

#: What each service applies.
WORKER = (recovery, fetch_wait, seek_uncommitted, seek_flow, offset_gaps, producer_flush)
DISPATCHER = (fetch_wait, seek_uncommitted, seek_flow, offset_gaps, producer_flush)
ALL = WORKER


class UnsupportedVersion(RuntimeError):
    """An installed Faust or aiokafka the patches were not checked against."""


@dataclass(frozen=True)
class ExtOptions:
    """Per-app settings the patches read (``app.journey_ext``)."""

    #: Consumer ``fetch_max_wait_ms`` (None: Faust's 1,500).
    fetch_max_wait_ms: int | None = None
    #: Bootstrap servers to fetch changelog ends from (None: trust ListOffsets).
    fetched_end_bootstrap: str | None = None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise :class:`UnsupportedVersion` naming a package outside :data:`CHECKED_VERSIONS`."""
    for package, (low, high) in CHECKED_VERSIONS.items():
        found = (installed or {}).get(package) or metadata.version(package)
        version = _version(found)
        if not low <= version < high:
            lowest = ".".join(map(str, low))
            above = ".".join(map(str, high))
            raise UnsupportedVersion(
                f"{package} {found} is installed; the engine's workarounds of its internals "
                f"were checked against {lowest} up to (not including) {above}: install one "
                f"of those (pip install '{package}>={lowest},<{above}'), or re-check "
                "stream/faust_ext (docs/faust-internals.md) before allowing it"
            )


def patches(modules: Iterable[ModuleType]) -> list[Patch]:
    out: list[Patch] = []
    for module in modules:
        out.extend(module.patches())
    return out


def patch_all(modules: Iterable[ModuleType] = ALL) -> None:
    """Check the upstream versions, register the store, apply ``modules``' patches."""
    check_versions()
    store.register()
    for patch in patches(modules):
        patch.apply()


def undo_all(modules: Iterable[ModuleType] = ALL) -> None:
    """Put the upstream attributes back (tests)."""
    for patch in patches(modules):
        patch.undo()
