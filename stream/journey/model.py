"""The configured journey model: the stage model plus the follow-up playbook."""

from __future__ import annotations

from stream.journey.stages import StageModel, load_model, with_playbook
from stream.settings import Settings


def journey_model(settings: Settings, stage_model: str | None = None) -> StageModel:
    """Load the stage model named in settings (or ``stage_model``) with its playbook."""
    j = settings.journey
    model = load_model(stage_model or j.stage_model, j.stages_dir)
    return with_playbook(
        model,
        j.abandonment,
        j.followups,
        session_gap_s=j.session_gap_s,
        recovery_within_s=j.recovery_within_s,
    )
