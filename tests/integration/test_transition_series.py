"""Every possible stage change is a metric series, at 0, before any event arrives.

Prometheus's ``increase()`` sees nothing of a series whose first scrape already
holds its final value; the funnel panels divide such increases, so a worker
that took in a burst before its first scrape showed no conversion at all.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from prometheus_client import REGISTRY

from stream.app import faust_app
from stream.journey.agent import register_journey
from stream.settings import load_settings
from stream.worker import declare_topics


def test_stage_changes_exist_at_zero_once_the_journey_agent_is_registered(tmp_path: Path) -> None:
    base = load_settings(environ={})
    settings = replace(base, worker=replace(base.worker, data_dir=str(tmp_path / "worker")))
    app = faust_app(settings, store="memory://")
    shell = register_journey(app, settings, declare_topics(app, settings))
    stages = shell.model.all_stages
    for from_stage, to_stage in [("none", stages[0]), *itertools.pairwise(stages)]:
        value = REGISTRY.get_sample_value(
            "journey_stage_transitions_total",
            {"from_stage": from_stage, "to_stage": to_stage},
        )
        assert value is not None, (from_stage, to_stage)
        assert value >= 0
