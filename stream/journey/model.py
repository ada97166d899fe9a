"""The configured journey model: the stage model, the follow-up playbook and stage visits."""

from __future__ import annotations

from stream.defaults import ConfigError
from stream.journey.stages import StageModel, load_model, with_playbook, with_visits
from stream.settings import Settings


def journey_model(settings: Settings, stage_model: str | None = None) -> StageModel:
    """Load the stage model named in settings (or ``stage_model``) with its playbook.

    The model keeps stage visits as ``[analytics]`` configures them, so the
    worker, ``journey replay`` and ``journey report`` run the same rules.
    """
    j = settings.journey
    a = settings.analytics
    model = load_model(stage_model or j.stage_model, j.stages_dir)
    model = with_playbook(
        model,
        j.abandonment,
        j.followups,
        session_gap_s=j.session_gap_s,
        recovery_within_s=j.recovery_within_s,
    )
    try:
        return with_visits(
            model,
            a.visit_window_s,
            touchpoint_property=a.touchpoint_property,
            segment=a.segment,
            max_touchpoints=a.max_visit_touchpoints,
        )
    except ValueError as exc:
        raise ConfigError(f"[analytics] {exc}") from None
