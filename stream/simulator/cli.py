"""Simulated customer journeys, deterministic from a seed.

Personas: browsers who leave, cart abandoners, online buyers, in-store buyers,
returning loyal customers, and anonymous visitors who log in (and may later buy
in store with their loyalty card). Sessions of 3-15 events, seconds to minutes
apart; customers come back after hours.

For the journey map (opt-in: ``personas=MAP_PERSONAS``, ``journey simulate
--map``), shoppers walk the funnel with planted effects that ``journey
report`` must find, every other touchpoint being independent of the outcome:
a product comparison page (``page_view:comparison``) that helps them from
consideration to decision, a support contact before checkout that hurts them
from decision to purchase, and optionally an incident (a :class:`Incident`:
from a given day, checkouts on one platform, ``context.platform``, fail with a
``payment_error``).

``generate`` returns touchpoint dicts accepted by ``stream.contract.parse``,
sorted by event time; ``to_segment`` and ``to_pos_row`` turn them into what
the collector and the POS producer take in; ``produce`` fills the touchpoints
topic (one message per session and routing key, as a Segment batch would).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from stream.simulator.formats import write_jsonl
from stream.simulator.journey_map import MAP_PERSONAS, Incident
from stream.simulator.personas import generate
from stream.simulator.publish import produce


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``journey simulate``."""
    parser = argparse.ArgumentParser(
        prog="journey simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start-ms", type=int, default=None, help="first session start (epoch ms)")
    parser.add_argument("--span-s", type=float, default=6 * 3600, help="spread of session starts")
    parser.add_argument("--out", type=Path, help="write JSON Lines here ('-' for stdout)")
    parser.add_argument("--produce", action="store_true", help="publish to the touchpoints topic")
    parser.add_argument("--broker-url", default="", help="broker for --produce")
    parser.add_argument("--rate", type=float, default=None, help="events/s when producing")
    parser.add_argument(
        "--map",
        action="store_true",
        help="journey-map shoppers with planted effects (comparison page helps, support "
        "contact before checkout hurts) instead of the usual personas",
    )
    parser.add_argument(
        "--incident-day",
        type=int,
        default=None,
        help="with --map: from this day after the start, checkouts on --incident-platform fail",
    )
    parser.add_argument("--incident-days", type=int, default=2, help="how long it lasts")
    parser.add_argument("--incident-platform", default="ios", help="context.platform it hits")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``journey simulate``: write the simulated events as JSON Lines, publish them, or both."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.incident_day is not None and not args.map:
        parser.error("--incident-day needs --map")
    incident = (
        None
        if args.incident_day is None
        else Incident(args.incident_day, args.incident_days, args.incident_platform)
    )
    events = generate(
        args.customers,
        args.seed,
        args.start_ms,
        args.span_s,
        personas=MAP_PERSONAS if args.map else None,
        incident=incident,
    )
    if args.out:
        if str(args.out) == "-":
            for e in events:
                sys.stdout.buffer.write(orjson.dumps(e) + b"\n")
        else:
            write_jsonl(args.out, events)
    if args.produce:
        from stream.settings import load_settings

        settings = load_settings()
        if args.broker_url:
            settings = settings.with_broker(args.broker_url)
        sent = produce(settings, events, rate=args.rate)
        print(f"produced {len(events)} events in {sent} messages", file=sys.stderr)
    if not args.out and not args.produce:
        print(f"{len(events)} events (use --out or --produce)", file=sys.stderr)
    return 0
