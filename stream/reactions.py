"""Simulated shoppers' answers to follow-ups (pure): the demo's closed loop.

A decided follow-up (``sent`` or ``held_out``) makes its customer come back
and buy with a planted probability per rule and arm: ``treated`` for a
customer who got the email, ``control`` for one held out. The planted uplift
is ``treated - control``; the engine's measured uplift should find it. Each
answer is a function of (seed, trigger id) only, so a run, a test and a
replay of the same decisions plant the same purchases.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from stream.analytics.attribution import ARMS, TREATED


@dataclass(frozen=True, slots=True)
class Planted:
    """Probabilities of buying within the window, by arm."""

    treated: float
    control: float

    @property
    def uplift(self) -> float:
        return self.treated - self.control


@dataclass(frozen=True, slots=True)
class Reactions:
    """What simulated shoppers do after a decision, per rule (``default`` for the rest).

    A purchase comes between ``earliest`` and ``latest`` (fractions of
    ``window_ms``) after the decision, worth ``min_value`` to ``max_value``.
    """

    window_ms: int
    rules: Mapping[str, Planted] = field(default_factory=dict)
    default: Planted = Planted(treated=0.25, control=0.10)
    earliest: float = 0.05
    latest: float = 0.6
    min_value: float = 20.0
    max_value: float = 180.0
    seed: int = 0

    def planted(self, rule: str) -> Planted:
        return self.rules.get(rule, self.default)


@dataclass(frozen=True, slots=True)
class Purchase:
    """A simulated order: ``delay_ms`` after the decision, worth ``value``."""

    trigger_id: str
    delay_ms: int
    value: float


def reaction(r: Reactions, trigger_id: str, rule: str, outcome: str) -> Purchase | None:
    """The purchase a decided follow-up leads to, or None (also for undecided outcomes)."""
    arm = ARMS.get(outcome)
    if arm is None:
        return None
    digest = hashlib.sha256(f"{r.seed}\x1f{trigger_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    planted = r.planted(rule)
    p = planted.treated if arm == TREATED else planted.control
    if rng.random() >= p:
        return None
    delay = int(r.window_ms * rng.uniform(r.earliest, r.latest))
    return Purchase(trigger_id, delay, round(rng.uniform(r.min_value, r.max_value), 2))
