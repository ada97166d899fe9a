"""The ``[analytics]`` settings, checked, and the journey model that keeps visits."""

from __future__ import annotations

from stream.defaults import ConfigError
from stream.journey.model import journey_model
from stream.journey.stages import StageModel
from stream.settings import AnalyticsSettings, Settings


def check(a: AnalyticsSettings) -> AnalyticsSettings:
    """``a`` if its values fit together; :class:`ConfigError` naming the first that does not."""
    problems = []
    if a.visit_window_s <= 0:
        problems.append("visit_window_s must be positive")
    if a.bucket_s <= 0:
        problems.append("bucket_s must be positive")
    else:
        for name in ("alert_window_s", "baseline_s"):
            value = getattr(a, name)
            if value <= 0 or value % a.bucket_s:
                problems.append(f"{name} must be a positive multiple of bucket_s ({a.bucket_s})")
    if not 0 < a.alert_level < 1:
        problems.append("alert_level must be between 0 and 1")
    for name in (
        "max_visit_touchpoints",
        "max_segment_values",
        "max_touchpoints",
        "min_visits",
        "alert_min_count",
        "retention_days",
    ):
        if getattr(a, name) < 1:
            problems.append(f"{name} must be at least 1")
    if problems:
        raise ConfigError("[analytics] " + "; ".join(problems))
    return a


def map_model(settings: Settings, stage_model: str | None = None) -> StageModel:
    """The configured journey model (:func:`journey_model`, which keeps stage visits), checked."""
    check(settings.analytics)
    return journey_model(settings, stage_model)
