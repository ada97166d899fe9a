"""Identity resolution: which journey does a touchpoint belong to?

The ``touchpoints`` topic is keyed by raw id (anonymous id, else customer id,
else ``loyalty:…``/``email:…``), and the identity table is keyed the same way,
so a lookup is always local to the partition being processed.

- An event with a customer id belongs to that customer.
- An event with only an alias (anonymous id, loyalty id, email) belongs to the
  customer the alias is linked to, or else to the orphan journey named after
  the alias (``anon:X``, ``loyalty:L``, ``email:e``).
- When an event shows an alias together with a customer id (login, identify,
  alias, a POS sale with both) the link is recorded, and the orphan journey of
  that alias is told to merge into the customer's (a ``merge`` message keyed by
  the orphan, on the same ordered topic the orphan's own events travel). Links
  for aliases keyed in other partitions are sent as ``link`` messages to the
  ``journey.links`` topic (co-partitioned with ``touchpoints``), on the
  partition of the alias, so the partition that owns the alias records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stream.contract import Touchpoint, alias_ids, internal_touchpoint

LINK = "link"
MERGE = "merge"
#: An erased customer's alias: its identity record goes (see ``stream.journey.linking``).
UNLINK = "unlink"


def orphan_key(raw_key: str) -> str:
    """Journey key of events seen only under ``raw_key`` (an alias)."""
    if raw_key.startswith(("loyalty:", "email:")):
        return raw_key
    return f"anon:{raw_key}"


@dataclass
class Resolution:
    """What to do with one touchpoint: where it goes and what else to send."""

    journey_key: str
    #: New link for the alias this partition owns: (alias raw key, customer id).
    record: tuple[str, str] | None = None
    #: ``merge`` touchpoints to send to orphan journeys: (orphan journey key, tp).
    merges: list[tuple[str, Touchpoint]] = field(default_factory=list)
    #: ``link`` touchpoints for aliases owned by other partitions: (raw key, tp).
    links: list[tuple[str, Touchpoint]] = field(default_factory=list)
    #: An alias this partition owns whose identity record is to be erased
    #: (the customer it links to was erased).
    forget: str | None = None


def _always(message_id: str) -> bool:
    return True


def resolve(
    tp: Touchpoint,
    lookup: Callable[[str], str | None],
    unsent: Callable[[str], bool] = _always,
) -> Resolution:
    """Decide the journey key of ``tp`` and the identity side effects.

    ``lookup(raw_key)`` returns the customer an alias owned by this partition is
    linked to, if any. ``unsent(message_id)`` says whether the caller still has
    to send the merge or link message of that id (ingest: once per process;
    the default, always), so those it sent already are not built again. Pure
    apart from calling ``lookup`` and ``unsent``.
    """
    key = tp.routing_key
    if tp.type == UNLINK:
        linked_to = str(tp.properties["customer_id"])
        return Resolution(journey_key="", forget=key if lookup(key) == linked_to else None)
    if tp.type == LINK:
        # Sent by resolve() itself: record alias -> customer where the alias lives.
        linked_to = str(tp.properties["customer_id"])
        res = Resolution(journey_key="")
        if lookup(key) != linked_to:
            res.record = (key, linked_to)
        # Always: the orphan journey answers the customer's journey, which waits
        # for that answer before it settles (see JourneyShell.held).
        res.merges.append((orphan_key(key), _merge(tp, key, linked_to)))
        return res
    customer = tp.customer_id
    if customer is None:
        linked = lookup(key)
        return Resolution(journey_key=linked or orphan_key(key))
    res = Resolution(journey_key=customer)
    if key != customer:
        if lookup(key) != customer:
            res.record = (key, customer)
        # Also when the link is on record: its merge may not have left before
        # a crash. Callers send each merge (and link) once per process.
        if unsent(merge_id(key, customer)):
            res.merges.append((orphan_key(key), _merge(tp, key, customer)))
    for alias in alias_ids(tp):
        if alias != key and unsent(link_id(alias, customer)):
            res.links.append((alias, _link(tp, alias, customer)))
    return res


def unlink(alias: str, customer: str, at: int) -> Touchpoint:
    """The message that erases ``alias``'s identity record if it links to ``customer``.

    Sent on ``journey.links`` to the partition that owns ``alias``.
    """
    return internal_touchpoint(
        UNLINK,
        f"unlink:{alias}:{customer}:{at}",
        at,
        anonymous_id=alias,
        properties={"customer_id": customer},
    )


def merge_id(alias: str, customer: str) -> str:
    return f"merge:{alias}:{customer}"


def link_id(alias: str, customer: str) -> str:
    return f"link:{alias}:{customer}"


def _merge(tp: Touchpoint, alias: str, customer: str) -> Touchpoint:
    return internal_touchpoint(
        MERGE,
        merge_id(alias, customer),
        tp.timestamp,
        anonymous_id=alias,
        properties={"into": customer, "alias": alias},
    )


def _link(tp: Touchpoint, alias: str, customer: str) -> Touchpoint:
    return internal_touchpoint(
        LINK,
        link_id(alias, customer),
        tp.timestamp,
        anonymous_id=alias,
        properties={"customer_id": customer},
    )
