"""The follow-up playbook: abandonment rules and stage-change follow-ups, as config.

Pure data loaded from the ``[[journey.abandonment]]`` and ``[[journey.followups]]``
tables of ``config/journey.toml``. The rules that use it live in
:mod:`stream.journey.abandonment`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stream.triggers.channels import parse_route
from stream.triggers.holdout import check_fraction

#: What must hold for an abandonment wait to stay open.
REQUIRES = ("cart", "checkout", "session_views")


@dataclass(frozen=True)
class AbandonmentRule:
    """A wait that starts with an event and fires if nothing cancels it in time.

    - ``start``: event types that open the wait (when ``requires`` holds);
    - ``restart``: event types that push an open wait's deadline back;
    - ``cancel``: event types that close it; it also closes as soon as
      ``requires`` stops holding (an emptied cart, a finished checkout);
    - ``requires``: ``cart`` (a non-empty cart), ``checkout`` (an open checkout)
      or ``session_views`` (at least ``min_count`` events of the ``start``
      types in the current session).
    """

    name: str
    start: frozenset[str]
    cancel: frozenset[str]
    wait_ms: int
    template: str
    requires: str = "cart"
    restart: frozenset[str] = frozenset()
    min_count: int = 0
    #: Share of customers held out of this rule's sends (the control group).
    holdout: float = 0.0


@dataclass(frozen=True)
class StageFollowUp:
    """A follow-up on entering ``to_stage`` (``first_time``: only the first entry)."""

    name: str
    to_stage: str
    template: str
    first_time: bool = True
    #: Share of customers held out of this rule's sends (the control group).
    holdout: float = 0.0


@dataclass(frozen=True)
class Playbook:
    abandonment: tuple[AbandonmentRule, ...] = ()
    followups: tuple[StageFollowUp, ...] = ()
    #: Inactivity that ends a browsing session (when events carry no session id).
    session_gap_ms: int = 30 * 60_000
    #: A purchase this soon after an abandonment counts as a recovery.
    recovery_within_ms: int = 7 * 86_400_000

    @property
    def empty(self) -> bool:
        return not (self.abandonment or self.followups)

    def holdouts(self) -> dict[str, float]:
        """Each rule's holdout fraction, by rule name."""
        out = {r.name: r.holdout for r in self.abandonment}
        out.update((f.name, f.holdout) for f in self.followups)
        return out


def _types(raw: Mapping[str, Any], name: str, where: str) -> frozenset[str]:
    value = raw.get(name, ())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {name} must be a list of event types")
    return frozenset(value)


def parse_playbook(
    abandonment: Iterable[Mapping[str, Any]],
    followups: Iterable[Mapping[str, Any]],
    stages: Iterable[str],
    roles: Mapping[str, str | None] | None = None,
    session_gap_s: float = 1800.0,
    recovery_within_s: float = 7 * 86_400.0,
) -> Playbook:
    """Build and check a :class:`Playbook`; errors name the offending entry.

    A follow-up's ``to_stage`` is a stage name or a role of the stage model
    (``$purchase``, ``$loyalty``), so one playbook works with every model; a
    role the model does not have (no loyalty stage) leaves that follow-up out.
    """
    roles = roles or {}
    rules = []
    names: set[str] = set()
    for i, raw in enumerate(abandonment):
        where = f"journey.abandonment[{i}]"
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name is required")
        if name in names:
            raise ValueError(f"{where}: duplicate rule name {name!r}")
        names.add(name)
        requires = raw.get("requires", "cart")
        if requires not in REQUIRES:
            raise ValueError(f"{where}: requires must be one of {', '.join(REQUIRES)}")
        wait_s = raw.get("wait_s")
        if not isinstance(wait_s, int | float) or wait_s <= 0:
            raise ValueError(f"{where}: wait_s must be a positive number of seconds")
        parse_route(raw, where)
        start = _types(raw, "start", where)
        if not start:
            raise ValueError(f"{where}: start must name at least one event type")
        rules.append(
            AbandonmentRule(
                name=name,
                start=start,
                cancel=_types(raw, "cancel", where),
                restart=_types(raw, "restart", where),
                wait_ms=int(wait_s * 1000),
                template=str(raw.get("template") or f"{name}_abandoned"),
                requires=requires,
                min_count=int(raw.get("min_count", 0)),
                holdout=check_fraction(raw.get("holdout", 0.0), where),
            )
        )
    known = set(stages)
    out = []
    for i, raw in enumerate(followups):
        where = f"journey.followups[{i}]"
        name, to_stage = raw.get("name"), raw.get("to_stage")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name is required")
        if name in names:
            raise ValueError(f"{where}: duplicate rule name {name!r}")
        names.add(name)
        holdout = check_fraction(raw.get("holdout", 0.0), where)
        parse_route(raw, where)
        if isinstance(to_stage, str) and to_stage.startswith("$"):
            if to_stage[1:] not in roles:
                raise ValueError(f"{where}: unknown role {to_stage!r} (use $purchase or $loyalty)")
            to_stage = roles[to_stage[1:]]
            if to_stage is None:
                continue
        if to_stage not in known:
            raise ValueError(f"{where}: to_stage {to_stage!r} is not a stage of the model")
        out.append(
            StageFollowUp(
                name=name,
                to_stage=str(to_stage),
                template=str(raw.get("template") or name),
                first_time=bool(raw.get("first_time", True)),
                holdout=holdout,
            )
        )
    return Playbook(
        abandonment=tuple(rules),
        followups=tuple(out),
        session_gap_ms=int(session_gap_s * 1000),
        recovery_within_ms=int(recovery_within_s * 1000),
    )


def rule_holdouts(
    abandonment: Iterable[Mapping[str, Any]], followups: Iterable[Mapping[str, Any]]
) -> dict[str, float]:
    """Each configured rule's holdout fraction by name, checked as :func:`parse_playbook`
    checks it (the dispatcher needs these alone, without a stage model)."""
    out: dict[str, float] = {}
    for section, entries in (("abandonment", abandonment), ("followups", followups)):
        for i, raw in enumerate(entries):
            where = f"journey.{section}[{i}]"
            name = raw.get("name")
            if isinstance(name, str) and name:
                out[name] = check_fraction(raw.get("holdout", 0.0), where)
    return out
