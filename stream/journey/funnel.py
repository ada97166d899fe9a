"""The funnel and one journey's view, from journey states (pure).

:func:`funnel_figures` gives additive figures for a set of journeys (one
worker's partitions); :func:`combine` sums them into the report ``GET
/funnel`` answers, whichever worker is asked.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from stream.journey import rules
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState


def journey_view(state: JourneyState, model: StageModel) -> dict[str, Any]:
    """Settled journey plus the stage it will have once pending events settle."""
    out = state.summary()
    if state.pending:
        # Up to the newest pending event only: further would also fire the lapse rule.
        horizon = state.pending[-1].timestamp
        provisional, _ = rules.advance(copy.deepcopy(state), horizon, model)
        out["provisional_stage"] = provisional.stage
    else:
        out["provisional_stage"] = state.stage
    return out


def funnel_figures(states: Iterable[JourneyState], model: StageModel) -> dict[str, Any]:
    """Raw, additive figures for a set of journeys (combine with :func:`combine`)."""
    current = dict.fromkeys(model.all_stages, 0)
    reached = dict.fromkeys(model.stages, 0)
    durations: dict[str, list[float]] = {s: [] for s in model.all_stages}
    customers = 0
    for state in states:
        if state.stage is None:
            continue
        customers += 1
        current[state.stage] = current.get(state.stage, 0) + 1
        seen = set()
        for visit in state.history:
            seen.add(visit.stage)
            if visit.left_at is not None and visit.stage in durations:
                durations[visit.stage].append((visit.left_at - visit.entered_at) / 1000)
        # A customer who jumped ahead passed through the skipped stages too.
        top = max((model.rank(s) for s in seen if s in model.stages), default=-1)
        for stage in model.stages[: top + 1]:
            reached[stage] += 1
    return {"customers": customers, "current": current, "reached": reached, "durations": durations}


def combine(parts: Iterable[Mapping[str, Any]], model: StageModel) -> dict[str, Any]:
    """Sum per-worker figures into the funnel report."""
    customers = 0
    current = dict.fromkeys(model.all_stages, 0)
    reached = dict.fromkeys(model.stages, 0)
    durations: dict[str, list[float]] = {s: [] for s in model.all_stages}
    for part in parts:
        customers += part["customers"]
        for s, n in part["current"].items():
            current[s] = current.get(s, 0) + n
        for s, n in part["reached"].items():
            reached[s] = reached.get(s, 0) + n
        for s, values in part["durations"].items():
            durations.setdefault(s, []).extend(values)
    stages = []
    for i, stage in enumerate(model.stages):
        nxt = model.stages[i + 1] if i + 1 < len(model.stages) else None
        entry: dict[str, Any] = {
            "stage": stage,
            "customers": current[stage],
            "reached": reached[stage],
            "median_time_in_stage_s": percentile(durations[stage], 50),
            "p90_time_in_stage_s": percentile(durations[stage], 90),
        }
        if nxt is not None:
            entry["next"] = nxt
            entry["conversion_to_next"] = (
                round(reached[nxt] / reached[stage], 4) if reached[stage] else None
            )
            entry["drop_off"] = reached[stage] - reached[nxt]
        stages.append(entry)
    report: dict[str, Any] = {"model": model.name, "customers": customers, "stages": stages}
    if model.lapse_stage:
        report["lapsed"] = current.get(model.lapse_stage, 0)
    return report


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return round(ordered[int(rank) - 1], 3)
