"""HTTP views on the journey table: one customer's journey, and the funnel.

``GET /customers/{id}/journey`` is routed by Faust to the worker that owns the
key. ``GET /funnel`` asks every worker for the raw figures of the partitions it
owns (``/funnel/local``) and combines them, so the answer covers all customers
whichever worker is asked.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

from stream.journey import rules
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState
from stream.security import forward_headers

if TYPE_CHECKING:
    from stream.journey.agent import JourneyShell

log = logging.getLogger(__name__)


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


def register_views(app: faust.App, shell: JourneyShell) -> None:
    model = shell.model

    @app.page("/customers/{customer_id}/journey")
    @app.table_route(table=shell.table, match_info="customer_id")
    async def customer_journey(self: View, request: Request, customer_id: str) -> Response:
        state = shell.load(customer_id)
        if state is None:
            return self.json({"error": f"no journey for {customer_id!r}"}, status=404)
        if state.merged_into is not None:
            return self.json({"key": customer_id, "merged_into": state.merged_into}, status=200)
        return self.json(journey_view(state, model))

    @app.page("/funnel/local")
    async def funnel_local(self: View, request: Request) -> Response:
        return self.json(funnel_figures(shell.local_states(), model))

    @app.page("/funnel")
    async def funnel(self: View, request: Request) -> Response:
        own = str(app.conf.canonical_url).rstrip("/")
        hosts = {str(h).rstrip("/") for h in app.router.tables_metadata()} - {own}
        parts = [funnel_figures(shell.local_states(), model)]
        for host in sorted(hosts):
            async with app.http_client.get(
                f"{host}/funnel/local", headers=forward_headers(request)
            ) as resp:
                if resp.status != 200:
                    return self.json({"error": f"worker {host} answered {resp.status}"}, status=503)
                parts.append(await resp.json())
        return self.json(combine(parts, model))
