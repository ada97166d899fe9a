"""Test helpers that read what really reached the broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stream.topics import read_topic

__all__ = ["REPO", "read_topic", "wait_for"]

#: The checkout the tests run from (deployment files under config/, docs, compose).
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 30.0, every_s: float = 0.2
) -> T:
    """Call ``probe`` until ``done(result)`` or the deadline; return the last result.

    Raises ``AssertionError`` with the last result when the deadline passes, so a
    failing test shows what it saw.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last: {result!r}"[:2000])
        time.sleep(every_s)
