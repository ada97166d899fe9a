"""``GET /followups``: per follow-up rule, decided, converted by arm, uplift and verdict.

Any worker answers for all: it asks every other worker for the follow-up counts
of the partitions it owns (``/followups/local``), merges them with its own and
reports (:func:`stream.analytics.followups.followups`). ``since`` and ``until``
(RFC 3339 or epoch ms) select triggers by the event time they were decided at,
in whole buckets; a bad query is a 400 with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

from stream import contract
from stream.analytics.followups import FollowupCounts, followups
from stream.security import forward_headers
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.attribution.agent import AttributionShell

#: Query parameters ``/followups`` takes (``token``: see ``stream.security``).
PARAMS = frozenset({"since", "until", "token"})


def window_of(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    """``since`` and ``until`` of a query in epoch ms; ``ValueError`` says what is wrong."""
    unknown = sorted(set(query) - PARAMS)
    if unknown:
        raise ValueError(f"unknown query parameter {unknown[0][:64]!r} (use since, until)")
    out: list[int | None] = []
    for name in ("since", "until"):
        text = query.get(name)
        if text is None or text == "":
            out.append(None)
            continue
        if len(text) > 64:
            raise ValueError(f"{name}: longer than 64 characters")
        try:
            out.append(contract.parse_timestamp(int(text) if text.isdigit() else text))
        except (contract.InvalidTouchpoint, ValueError, OverflowError):
            raise ValueError(
                f"{name}: {text!r} is not an RFC 3339 time or epoch ms between 2000 and 2100"
            ) from None
    since, until = out
    if since is not None and until is not None and since >= until:
        raise ValueError("since must be before until")
    return since, until


async def gather(
    app: faust.App, shell: AttributionShell, headers: Mapping[str, str]
) -> FollowupCounts | str:
    """Every worker's follow-up counts merged (this one's and ``/followups/local`` of the
    others, asked with ``headers``), or why one could not be had."""
    own = str(app.conf.canonical_url).rstrip("/")
    hosts = {str(h).rstrip("/") for h in app.router.tables_metadata()} - {own}
    counts = shell.local_counts()
    for host in sorted(hosts):
        async with app.http_client.get(f"{host}/followups/local", headers=dict(headers)) as resp:
            if resp.status != 200:
                return f"worker {host} answered {resp.status}"
            body: Any = await resp.json()
        try:
            counts.merge(FollowupCounts.from_dict(body))
        except (KeyError, TypeError, ValueError):
            return f"worker {host} sent unreadable counts"
    return counts


class Followups:
    """The follow-ups report for every worker's customers."""

    def __init__(self, app: faust.App, shell: AttributionShell, settings: Settings) -> None:
        self.app = app
        self.shell = shell
        self.min_per_arm = settings.attribution.min_per_arm

    async def __call__(
        self, headers: Mapping[str, str], since: int | None, until: int | None
    ) -> list[dict[str, Any]] | str:
        counts = await gather(self.app, self.shell, headers)
        if isinstance(counts, str):
            return counts
        return followups(counts, since, until, self.min_per_arm)


def register_followup_views(
    app: faust.App, shell: AttributionShell, settings: Settings
) -> Followups:
    """``/followups`` and ``/followups/local``; returns the report's source."""
    section = Followups(app, shell, settings)

    @app.page("/followups/local")
    async def followups_local(self: View, request: Request) -> Response:
        return self.json(shell.local_counts().to_dict())

    @app.page("/followups")
    async def followups_all(self: View, request: Request) -> Response:
        try:
            since, until = window_of(request.query)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        report = await section(forward_headers(request), since, until)
        if isinstance(report, str):
            return self.json({"error": report}, status=503)
        window = {
            "since": None if since is None else contract.format_timestamp(since),
            "until": None if until is None else contract.format_timestamp(until),
        }
        return self.json(
            {"window": window, "min_per_arm": section.min_per_arm, "followups": report}
        )

    return section
