"""``journey``: one command for every service of the engine.

journey stack        start the embedded broker, Redis and SMTP catcher
journey worker       the Faust worker (ingest + journey agents, HTTP views)
journey dispatcher   send follow-ups for triggers (Redis guards, SMTP)
journey suppress     add/remove/check/list entries of the dispatcher's suppression list
journey forget       erase one customer (journey, identity links, dispatcher data)
journey export       everything held on one customer, as JSON
journey collector    the Segment-compatible HTTP collector
journey pos          publish POS transactions from CSV / JSON Lines
journey replay       run an event log through the pure rules (the oracle)
journey report       the journey map of an event log (stages, flows, touchpoints, alerts)
journey simulate     generate simulated journeys (JSON Lines or to Kafka)
journey demo         everything above, embedded, with a live summary
journey topics       create the topics
journey config       print the effective settings

This module holds the parser and the dispatch; the command bodies sit by what
they operate: :mod:`~stream.cli.services` (the long-running processes),
:mod:`~stream.cli.customers` (one customer's data and consent),
:mod:`~stream.cli.event_logs` (simulate, replay, report) and
:mod:`~stream.cli.environment` (stack, topics, settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stream.cli import customers, environment, event_logs, services
from stream.defaults import ConfigError
from stream.settings import Settings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="journey",
        description=(
            "Real-time customer-journey engine: touchpoints -> Kafka -> Faust agents -> "
            "stages, transitions, abandonment and follow-ups."
        ),
        epilog=(
            "Settings: the packaged defaults, then the file named by --config or "
            "JOURNEY_CONFIG, then JOURNEY_<SECTION>_<FIELD> variables (`journey config`)."
        ),
    )
    parser.add_argument(
        "--config", help="settings file (default: $JOURNEY_CONFIG, else the packaged defaults)"
    )
    parser.add_argument("--log-level", default="info", help="logging level (default: info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fun: Callable[[argparse.Namespace, Settings], int], text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=fun)
        # Also after the command (journey worker --log-level warning); set only when given.
        p.add_argument("--log-level", default=argparse.SUPPRESS, help="logging level")
        return p

    p = add(
        "stack",
        environment.cmd_stack,
        "Start the embedded Kafka-compatible broker, Redis and SMTP catcher "
        "on loopback and record their addresses in var/stack.json for the other commands.",
    )
    p.add_argument(
        "--dir",
        default="var/stack",
        help="where the stack keeps its logs, Redis files and the mail folder (default: var/stack)",
    )

    p = add(
        "worker",
        services.cmd_worker,
        "Run the Faust worker: ingest (validate, dedupe, identity) and "
        "journey (state table, stage transitions) agents, plus GET /customers/{id}/journey, "
        "GET /funnel and GET /metrics on its web port.",
    )
    p.add_argument(
        "--web-port", type=int, default=None, help="HTTP port (default: [worker] web_port)"
    )
    p.add_argument(
        "--store", default=None, help="table store URL: rocksdb:// (default) or memory://"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the tables' RocksDB files live (default: [worker] data_dir)",
    )

    p = add(
        "dispatcher",
        services.cmd_dispatcher,
        "Run the follow-up dispatcher: consume journey.triggers and touchpoints.resolved, "
        "guard each send in Redis (idempotency, consent, purchase, quiet hours, frequency cap), "
        "render config/templates and send by SMTP; outcomes to journey.dispatch, failures to "
        "journey.dispatch.dlq; GET /metrics and /ready on its web port.",
    )
    p.add_argument(
        "--web-port", type=int, default=None, help="HTTP port (default: [dispatch] web_port)"
    )

    p = add(
        "suppress",
        customers.cmd_suppress,
        "Manage the dispatcher's suppression list (emails or customer ids that never get "
        "follow-ups): journey suppress add|remove|check ENTRY..., journey suppress list "
        "(entries are kept as SHA-256 digests).",
    )
    p.add_argument("action", choices=["add", "remove", "check", "list"])
    p.add_argument("entries", nargs="*", help="emails or customer ids")

    p = add(
        "forget",
        customers.cmd_forget,
        "Erase a customer (GDPR art. 17): their journey, every alias in the identity table, "
        "triggers not yet sent and the dispatcher's Redis data; later events start a new "
        "journey. Same as DELETE /customers/ID on a worker.",
    )
    p.add_argument("customer_id", help="the journey key (customer id)")

    p = add(
        "export",
        customers.cmd_export,
        "Print everything held on a customer as JSON (GDPR art. 15): journey, aliases, "
        "dispatcher data. Same as GET /customers/ID/export on a worker (admin token).",
    )
    p.add_argument("customer_id", help="the journey key (customer id)")
    p.add_argument("--worker", help="a worker's base URL (default: this host's worker port)")

    p = add(
        "collector",
        services.cmd_collector,
        "Run the Segment-compatible HTTP collector "
        "(POST /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/alias, /v1/group, /v1/batch).",
    )
    p.add_argument("--port", type=int, default=None, help="listen port (default: [collector] port)")

    p = add(
        "pos",
        services.cmd_pos,
        "Publish in-store POS transactions from CSV or JSON Lines "
        "(file, folder of exports or - for stdin); resumable through a checkpoint file.",
    )
    try:
        from stream.producers.pos.cli import add_arguments as pos_arguments

        pos_arguments(p)
    except ImportError as exc:  # pragma: no cover - only when the package is broken
        p.set_defaults(import_error=str(exc))

    p = add(
        "replay",
        event_logs.cmd_replay,
        "Run a JSON Lines event log through the pure journey rules offline "
        "and print JSON Lines: transitions and final states (the oracle for the stream).",
    )
    p.add_argument("file", type=Path, help="JSON Lines file of touchpoints ('-' for stdin)")
    p.add_argument(
        "--stage-model", default=None, help="stage model name or file (default: setting)"
    )
    p.add_argument(
        "--until",
        default=None,
        help="final watermark: RFC 3339, epoch ms, or 'end' "
        "(default: now minus the allowed lateness, as an idle, caught-up stream)",
    )

    p = add(
        "report",
        event_logs.cmd_report,
        "The journey map of a JSON Lines event log: stage visits, flows, touchpoint impact "
        "(moments of truth, pain points), segments and drop-off alerts, as JSON. Runs the "
        "same pure code as the stream's map.",
    )
    p.add_argument("file", type=Path, help="JSON Lines file of touchpoints ('-' for stdin)")
    p.add_argument("--format", choices=["json"], default="json", help="output format (json)")
    p.add_argument("--since", default=None, help="window start: RFC 3339 or epoch ms")
    p.add_argument("--until", default=None, help="window end (exclusive): RFC 3339 or epoch ms")
    p.add_argument(
        "--segment",
        default=None,
        metavar="DIM:VALUE",
        help="one segment of the [analytics] segment dimension, e.g. context.platform:ios",
    )
    p.add_argument(
        "--as-of",
        default=None,
        help="event time the journeys are settled to, RFC 3339 or epoch ms (default: now "
        "minus the allowed lateness, or one visit window after the log's last event if earlier)",
    )
    p.add_argument(
        "--stage-model", default=None, help="stage model name or file (default: setting)"
    )

    p = add(
        "simulate",
        event_logs.cmd_simulate,
        "Generate simulated customer journeys as JSON Lines or into Kafka "
        "(`journey simulate --help` lists the options).",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for stream.simulator")

    p = add(
        "demo",
        services.cmd_demo,
        "Start everything embedded (broker, Redis, SMTP catcher, worker, "
        "collector) with simulated web and POS shoppers and a live summary.",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    p.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where data and logs go (default: a new folder under var/demo)",
    )

    add("topics", environment.cmd_topics, "Create every topic the engine uses (idempotent).")
    p = add(
        "config",
        environment.cmd_config,
        "Print the files in use (packaged default or user file) and the effective "
        "settings as JSON (secrets masked).",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the packaged settings file, stage models and templates into DIR to edit",
    )
    return parser


#: Subcommands whose arguments belong to another parser (``journey simulate --customers 5``).
PASS_THROUGH = {"simulate"}


#: Options before the command that take a value (``journey --config FILE simulate``).
GLOBAL_VALUE_OPTIONS = {"--config", "--log-level"}


def command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is in ``argv`` (after the global options), or None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return i
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    i = command_index(argv)
    if i is not None and argv[i] in PASS_THROUGH:
        rest = argv[i + 1 :]
        argv = [*argv[: i + 1], "--", *rest] if rest and rest[0] != "--" else argv
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(args.config)
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        parser.exit(2, f"journey: configuration error: {exc}\n")
