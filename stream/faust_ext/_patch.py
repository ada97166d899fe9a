"""Replacing an upstream attribute so that it can be undone, and only once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: (owner, attribute) -> the upstream value a patch replaced.
_ORIGINALS: dict[tuple[Any, str], Any] = {}


@dataclass(frozen=True)
class Patch:
    """``owner.attribute`` replaced by ``make(original)``.

    ``apply`` is idempotent (a second call changes nothing) and ``undo`` puts
    the upstream value back, so tests can run with and without a patch.
    """

    owner: Any
    attribute: str
    make: Callable[[Any], Any]

    @property
    def applied(self) -> bool:
        return (self.owner, self.attribute) in _ORIGINALS

    def original(self) -> Any:
        """The upstream value (also while the patch is applied)."""
        return _ORIGINALS.get((self.owner, self.attribute), getattr(self.owner, self.attribute))

    def apply(self) -> None:
        if self.applied:
            return
        original = getattr(self.owner, self.attribute)
        replacement = self.make(original)
        _ORIGINALS[self.owner, self.attribute] = original
        setattr(self.owner, self.attribute, replacement)

    def undo(self) -> None:
        original = _ORIGINALS.pop((self.owner, self.attribute), None)
        if original is not None:
            setattr(self.owner, self.attribute, original)
