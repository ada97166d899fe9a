"""The stage model: ordered stages and the rules that move a customer between them.

Loaded from a TOML file (the packaged ``stream/defaults/stages/*.toml`` or the
user's own, see :mod:`stream.defaults`); pure data, no I/O after loading.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from stream.contract import Touchpoint
from stream.defaults import ConfigError, stage_model_file
from stream.journey.visits import VISIT_TOUCHPOINTS, VisitRules
from stream.triggers.playbook import Playbook, parse_playbook

DAY_MS = 86_400_000


@dataclass(frozen=True)
class StageRule:
    stage: str
    types: frozenset[str]
    #: property name -> allowed values; all must match.
    properties: Mapping[str, frozenset[Any]]

    def matches(self, tp: Touchpoint) -> bool:
        if tp.type not in self.types:
            return False
        props = tp.properties
        for name, allowed in self.properties.items():
            value = props.get(name)
            try:
                if value not in allowed:
                    return False
            except TypeError:  # unhashable property value
                return False
        return True


@dataclass(frozen=True)
class StageModel:
    """Ordered funnel stages plus the loyalty and lapse rules."""

    name: str
    stages: tuple[str, ...]
    initial: str
    purchase_stage: str
    rules: tuple[StageRule, ...]
    allow_regression: bool = False
    new_cycle_after_purchase: bool = True
    loyalty_stage: str | None = None
    repeat_purchase_within_ms: int = 0
    engagement_types: frozenset[str] = frozenset()
    engagement_within_ms: int = 0
    lapse_stage: str | None = None
    lapse_after_ms: int = 0
    lapse_from: frozenset[str] = frozenset()
    #: Abandonment waits and stage follow-ups (from ``config/journey.toml``).
    playbook: Playbook = field(default_factory=Playbook)
    #: Stage visits for the journey map (from ``[analytics]``); None: none are kept.
    visits: VisitRules | None = None

    @property
    def all_stages(self) -> tuple[str, ...]:
        """Funnel stages followed by the lapse stage (which is outside the funnel)."""
        return self.stages + ((self.lapse_stage,) if self.lapse_stage else ())

    @property
    def terminal_stage(self) -> str:
        """The last funnel stage: a visit there can only end dropped."""
        return self.stages[-1]

    def rank(self, stage: str) -> int:
        """Position in the funnel; the lapse stage ranks below everything."""
        if stage == self.lapse_stage:
            return -1
        return self.stages.index(stage)

    def stage_for(self, tp: Touchpoint) -> str | None:
        """The stage an event points to, or None when no rule matches."""
        for rule in self._rules_by_type.get(tp.type, ()):
            if rule.matches(tp):
                return rule.stage
        return None

    @cached_property
    def _rules_by_type(self) -> dict[str, tuple[StageRule, ...]]:
        """The rules (in order) that can match each event type: only those are tried."""
        out: dict[str, list[StageRule]] = {}
        for rule in self.rules:
            for type_ in rule.types:
                out.setdefault(type_, []).append(rule)
        return {type_: tuple(rules) for type_, rules in out.items()}

    @cached_property
    def purchase_types(self) -> frozenset[str]:
        out: set[str] = set()
        for rule in self.rules:
            if rule.stage == self.purchase_stage and not rule.properties:
                out |= rule.types
        return frozenset(out)


def _fail(path: Path | str, msg: str) -> ValueError:
    return ValueError(f"stage model {path}: {msg}")


def parse_model(data: Mapping[str, Any], where: str = "<model>") -> StageModel:
    """Build and check a :class:`StageModel` from decoded TOML."""
    stages = tuple(data.get("stages", ()))
    if len(stages) < 2 or len(set(stages)) != len(stages):
        raise _fail(where, "stages must list at least two distinct names")
    initial = data.get("initial", stages[0])
    purchase = data.get("purchase_stage")
    for label, value in (("initial", initial), ("purchase_stage", purchase)):
        if value not in stages:
            raise _fail(where, f"{label} {value!r} is not one of the stages")
    assert isinstance(purchase, str)
    rules = []
    for i, raw in enumerate(data.get("rules", ())):
        stage = raw.get("stage")
        if stage not in stages:
            raise _fail(where, f"rules[{i}] points to undefined stage {stage!r}")
        types = raw.get("types") or []
        if not types:
            raise _fail(where, f"rules[{i}] has no types")
        props = {
            k: frozenset(v if isinstance(v, list) else [v])
            for k, v in (raw.get("properties") or {}).items()
        }
        rules.append(StageRule(stage, frozenset(types), props))
    movement = data.get("movement", {})
    loyalty = data.get("loyalty", {})
    lapse = data.get("lapse", {})
    loyalty_stage = loyalty.get("stage")
    if loyalty_stage is not None and loyalty_stage not in stages:
        raise _fail(where, f"loyalty stage {loyalty_stage!r} is not one of the stages")
    lapse_stage = lapse.get("stage")
    if lapse_stage is not None and lapse_stage in stages:
        raise _fail(where, "the lapse stage must not be a funnel stage")
    lapse_from = frozenset(lapse.get("from", ()))
    if not lapse_from <= set(stages):
        raise _fail(where, f"lapse.from names undefined stages: {sorted(lapse_from - set(stages))}")
    return StageModel(
        name=data.get("name", where),
        stages=stages,
        initial=initial,
        purchase_stage=purchase,
        rules=tuple(rules),
        allow_regression=bool(movement.get("allow_regression", False)),
        new_cycle_after_purchase=bool(movement.get("new_cycle_after_purchase", True)),
        loyalty_stage=loyalty_stage,
        repeat_purchase_within_ms=int(loyalty.get("repeat_purchase_within_days", 0) * DAY_MS),
        engagement_types=frozenset(loyalty.get("engagement_types", ())),
        engagement_within_ms=int(loyalty.get("engagement_within_days", 0) * DAY_MS),
        lapse_stage=lapse_stage,
        lapse_after_ms=int(lapse.get("after_days", 0) * DAY_MS),
        lapse_from=lapse_from,
    )


def load_model(name_or_path: str, stages_dir: str | Path = "") -> StageModel:
    """Load a stage model by name (``stages_dir`` first, then the packaged ones) or path.

    Raises :class:`stream.defaults.ConfigError` naming a file that is missing
    or not a valid model.
    """
    source = stage_model_file(name_or_path, str(stages_dir) if stages_dir else "")
    try:
        data = tomllib.loads(source.read_bytes().decode())
        return parse_model(data, source.location)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"stage model {source.location!r} is not valid: {exc!r}") from None


def with_playbook(
    model: StageModel,
    abandonment: Iterable[Mapping[str, Any]],
    followups: Iterable[Mapping[str, Any]],
    session_gap_s: float = 1800.0,
    recovery_within_s: float = 7 * 86_400.0,
) -> StageModel:
    """``model`` with the abandonment rules and stage follow-ups from config."""
    playbook = parse_playbook(
        abandonment,
        followups,
        model.all_stages,
        roles={"purchase": model.purchase_stage, "loyalty": model.loyalty_stage},
        session_gap_s=session_gap_s,
        recovery_within_s=recovery_within_s,
    )
    return replace(model, playbook=playbook)


def with_visits(
    model: StageModel,
    window_s: float,
    touchpoint_property: str = "",
    segment: str = "",
    max_touchpoints: int = VISIT_TOUCHPOINTS,
) -> StageModel:
    """``model`` keeping stage visits (see :mod:`stream.journey.visits`)."""
    rules = VisitRules(
        window_ms=int(window_s * 1000),
        touchpoint_property=touchpoint_property,
        segment=segment,
        max_touchpoints=max_touchpoints,
    )
    return replace(model, visits=rules)
