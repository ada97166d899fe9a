"""Control groups: which customers a follow-up rule holds out (pure).

Membership is a salted hash of the rule and the customer, read as a number in
[0, 1) and compared with the rule's ``holdout`` fraction. The same customer is
therefore always treated or always held out for one rule, on every dispatcher
and after every restart, and independently across rules; changing the salt
draws a new split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

_SCALE = 2**64


def holdout_point(customer: str, rule: str, salt: str) -> float:
    """The customer's place in [0, 1) for ``rule``: uniform over customers, fixed per salt."""
    text = f"{salt}\x1f{rule}\x1f{customer}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_held_out(customer: str, rule: str, fraction: float, salt: str) -> bool:
    """True when ``customer`` is in ``rule``'s control group of share ``fraction``."""
    if fraction <= 0.0:
        return False
    return holdout_point(customer, rule, salt) < fraction


def check_fraction(value: object, where: str) -> float:
    """A holdout fraction from config: a number with 0 <= h < 1 (1 would send nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: holdout must be a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{where}: holdout must be at least 0 and below 1, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Holdouts:
    """Every rule's holdout fraction (rules not named hold out nobody) and the salt."""

    fractions: Mapping[str, float] = field(default_factory=dict)
    salt: str = ""

    def held_out(self, rule: str, customer: str) -> bool:
        return is_held_out(customer, rule, self.fractions.get(rule, 0.0), self.salt)
