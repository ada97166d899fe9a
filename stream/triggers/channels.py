"""Which channels a follow-up rule sends through: ``email``, ``webhook`` or both.

Pure data read from a rule's ``channels`` (default ``["email"]``) and ``webhooks``
(the names of the endpoints it posts to, required with the ``webhook`` channel).
The endpoints themselves are checked against ``[webhooks]`` when the dispatcher
starts (:func:`unknown_endpoints`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (EMAIL, WEBHOOK)


@dataclass(frozen=True, slots=True)
class Route:
    """The channels of one rule: email or not, and the webhook endpoints, in order."""

    email: bool = True
    webhooks: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return ((EMAIL,) if self.email else ()) + ((WEBHOOK,) if self.webhooks else ())


EMAIL_ONLY = Route()


def parse_route(raw: Mapping[str, Any], where: str) -> Route:
    """The :class:`Route` of one rule table; ``ValueError`` naming ``where`` when invalid."""
    channels = raw.get("channels", [EMAIL])
    if (
        not isinstance(channels, list | tuple)
        or not channels
        or not all(isinstance(c, str) and c in CHANNELS for c in channels)
    ):
        raise ValueError(f"{where}: channels must be a non-empty list of {', '.join(CHANNELS)}")
    if len(set(channels)) != len(channels):
        raise ValueError(f"{where}: channels lists a channel twice")
    hooks = raw.get("webhooks", [])
    if not isinstance(hooks, list | tuple) or not all(isinstance(h, str) and h for h in hooks):
        raise ValueError(f"{where}: webhooks must be a list of endpoint names")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"{where}: webhooks names an endpoint twice")
    if WEBHOOK in channels and not hooks:
        raise ValueError(f"{where}: the webhook channel needs webhooks = [endpoint names]")
    if hooks and WEBHOOK not in channels:
        raise ValueError(f"{where}: webhooks is set but channels does not include webhook")
    return Route(email=EMAIL in channels, webhooks=tuple(hooks))


def routes_by_rule(
    abandonment: Iterable[Mapping[str, Any]], followups: Iterable[Mapping[str, Any]]
) -> dict[str, Route]:
    """Rule name -> :class:`Route` for every configured rule (errors name the rule's path)."""
    out: dict[str, Route] = {}
    for section, rules in (("abandonment", abandonment), ("followups", followups)):
        for i, raw in enumerate(rules):
            name = raw.get("name")
            out[str(name)] = parse_route(raw, f"journey.{section}[{i}]")
    return out


def unknown_endpoints(routes: Mapping[str, Route], endpoints: Iterable[str]) -> list[str]:
    """One line per rule naming an endpoint that is not configured."""
    known = set(endpoints)
    return [
        f"rule {rule!r} names webhook endpoint {name!r}, which is not in [webhooks] endpoints"
        f" (configured: {', '.join(sorted(known)) or 'none'})"
        for rule, route in sorted(routes.items())
        for name in route.webhooks
        if name not in known
    ]
