"""HTTP views on the journey table: one customer's journey, and the funnel.

``GET /customers/{id}/journey`` is routed by Faust to the worker that owns the
key. ``GET /funnel`` asks every worker for the raw figures of the partitions it
owns (``/funnel/local``) and combines them, so the answer covers all customers
whichever worker is asked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faust
from faust.web import Request, Response, View

from stream.journey.funnel import combine, funnel_figures, journey_view
from stream.security import forward_headers

if TYPE_CHECKING:
    from stream.journey.agent import JourneyShell

log = logging.getLogger(__name__)


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
