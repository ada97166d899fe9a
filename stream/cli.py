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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from stream.defaults import ConfigError
from stream.security import require_secrets
from stream.settings import Settings, as_dict, load_settings, with_environ

log = logging.getLogger("journey")

STACK_FILE = "var/stack.json"


def resolve_stack(settings: Settings) -> Settings:
    """With no broker set, every part of a running ``journey stack`` (``var/stack.json``
    in the working directory): its broker, Redis, SMTP catcher and API token."""
    stack = settings.path(STACK_FILE)
    if settings.broker.url or not stack.exists():
        return settings
    info = json.loads(stack.read_text())
    return with_environ(settings, info["environment"], str(stack))


def resolve_broker(settings: Settings) -> Settings:
    """:func:`resolve_stack`, and exit saying what to do when there is still no broker."""
    settings = resolve_stack(settings)
    if settings.broker.url:
        return settings
    raise SystemExit(
        "No broker configured: set JOURNEY_BROKER_URL (e.g. kafka://localhost:9092), "
        "or start the embedded one with `journey stack` in another terminal, "
        "or run everything embedded with `journey demo`."
    )


def quiet_client_logs(level: str) -> None:
    """Kafka client libraries log per message at DEBUG; never pay for that on the hot path."""
    floor = max(logging.INFO, logging.getLevelName(level.upper()))
    for name in ("aiokafka", "kafka", "faust.topics", "faust.transport"):
        logging.getLogger(name).setLevel(floor)


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from stream.topics import ensure_topics

    settings = resolve_broker(settings)
    topics = ensure_topics(settings)
    print(json.dumps({"created_or_present": topics}))
    return 0


def use_uvloop() -> None:
    """Run the worker and the dispatcher on uvloop when installed (a dependency except on Windows).

    Faust supports it, and it cuts the event loop's share of the per-message
    cost (see docs/performance.md, "Where a worker's time goes" and "The
    dispatcher").
    """
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Fewer cyclic-GC passes in the worker: freeze the start-up heap, gen-0 threshold 500,000.

    Objects alive after start-up are frozen out of collection, and the gen-0
    threshold goes from Python's 700 to 500,000 (gen-1 and gen-2 stay at 10).
    Why: the worker makes millions of short-lived objects that reference
    counting frees, and each pass re-scans the young heap (decoded states in
    flux), so fewer passes cost less. See docs/performance.md, "Where a
    worker's time goes".
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(500_000, 10, 10)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    from stream.topics import ensure_topics
    from stream.worker import build_worker_app

    settings = resolve_broker(settings)
    if args.data_dir is not None:
        settings = replace(settings, worker=replace(settings.worker, data_dir=args.data_dir))
    require_secrets(settings, "worker")
    ensure_topics(settings)
    use_uvloop()
    app = build_worker_app(settings, store=args.store, web_port=args.web_port)
    tune_gc()
    worker = Worker(app, loglevel=args.log_level, redirect_stdouts=False)
    quiet_client_logs(args.log_level)
    worker.execute_from_commandline()
    return 0


def cmd_dispatcher(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    from stream.dispatch.app import build_dispatcher_app
    from stream.topics import ensure_topics

    settings = resolve_broker(settings)
    if args.web_port is not None:
        settings = replace(settings, dispatch=replace(settings.dispatch, web_port=args.web_port))
    require_secrets(settings, "dispatcher")
    ensure_topics(settings)
    use_uvloop()
    app = build_dispatcher_app(settings)
    worker = Worker(app, loglevel=args.log_level, redirect_stdouts=False)
    quiet_client_logs(args.log_level)
    worker.execute_from_commandline()
    return 0


def cmd_suppress(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    import redis.asyncio as aioredis

    from stream.dispatch.guards import Guards, Keys

    settings = resolve_stack(settings)
    require_secrets(settings, "suppress")

    async def run() -> dict[str, object]:
        client = aioredis.Redis.from_url(settings.redis.url)
        guards = Guards(client, Keys(settings.dispatch.key_prefix))
        try:
            if args.action == "add":
                return {"added": await guards.suppress(*args.entries)}
            if args.action == "remove":
                return {"removed": await guards.unsuppress(*args.entries)}
            if args.action == "check":
                return {e: await guards.is_suppressed(e) for e in args.entries}
            members = await client.smembers(guards.keys.suppressed)
            return {
                "suppressed": sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            }
        finally:
            await client.aclose()

    if args.action != "list" and not args.entries:
        raise SystemExit(
            "journey suppress add|remove|check needs at least one email or customer id"
        )
    print(json.dumps(asyncio.run(run())))
    return 0


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from stream.privacy import forget

    settings = resolve_broker(settings)
    print(json.dumps(forget(settings, args.customer_id)))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from stream.privacy import export

    settings = resolve_stack(settings)
    print(json.dumps(export(settings, args.customer_id, args.worker), indent=2))
    return 0


def cmd_collector(args: argparse.Namespace, settings: Settings) -> int:
    from stream.producers.collector import run

    settings = resolve_broker(settings)
    if args.port is not None:
        settings = replace(settings, collector=replace(settings.collector, port=args.port))
    require_secrets(settings, "collector")
    run(settings)
    return 0


def cmd_pos(args: argparse.Namespace, settings: Settings) -> int:
    from stream.producers.pos import cli as pos

    return pos.main(args, resolve_broker(settings))


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from stream.journey.replay import main

    return main(args, settings)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from stream.analytics.offline import main

    return main(args, settings)


def passed_through(rest: Sequence[str]) -> list[str]:
    return list(rest[1:] if rest and rest[0] == "--" else rest)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from stream import simulator

    argv = passed_through(args.rest)
    if "--produce" in argv and "--broker-url" not in argv:
        argv += ["--broker-url", resolve_broker(settings).broker.url]
    return simulator.main(argv) or 0


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from stream.embedded import EmbeddedStack

    workdir = settings.path(args.dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedStack(workdir) as stack:
        info = stack.describe()
        path = settings.path(STACK_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2))
        print(json.dumps(info, indent=2), flush=True)
        print(
            f"Embedded stack running; the other journey commands started in this folder "
            f"use it ({path}). Emails land in {info['mail_folder']}. Ctrl-C stops it.",
            flush=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            path.unlink(missing_ok=True)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from stream.demo import run_demo

    return run_demo(settings, duration_s=args.duration, rate=args.rate, workdir=args.workdir)


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from stream.defaults import export
    from stream.settings import files_in_use

    if args.export is not None:
        written = export(args.export)
        print(json.dumps({"exported": [str(p) for p in written]}, indent=2))
        return 0
    files = [f.to_dict() for f in files_in_use(settings)]
    print(json.dumps({"files": files, "settings": as_dict(settings)}, indent=2, default=str))
    return 0


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
        cmd_stack,
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
        cmd_worker,
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
        cmd_dispatcher,
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
        cmd_suppress,
        "Manage the dispatcher's suppression list (emails or customer ids that never get "
        "follow-ups): journey suppress add|remove|check ENTRY..., journey suppress list "
        "(entries are kept as SHA-256 digests).",
    )
    p.add_argument("action", choices=["add", "remove", "check", "list"])
    p.add_argument("entries", nargs="*", help="emails or customer ids")

    p = add(
        "forget",
        cmd_forget,
        "Erase a customer (GDPR art. 17): their journey, every alias in the identity table, "
        "triggers not yet sent and the dispatcher's Redis data; later events start a new "
        "journey. Same as DELETE /customers/ID on a worker.",
    )
    p.add_argument("customer_id", help="the journey key (customer id)")

    p = add(
        "export",
        cmd_export,
        "Print everything held on a customer as JSON (GDPR art. 15): journey, aliases, "
        "dispatcher data. Same as GET /customers/ID/export on a worker (admin token).",
    )
    p.add_argument("customer_id", help="the journey key (customer id)")
    p.add_argument("--worker", help="a worker's base URL (default: this host's worker port)")

    p = add(
        "collector",
        cmd_collector,
        "Run the Segment-compatible HTTP collector "
        "(POST /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/alias, /v1/group, /v1/batch).",
    )
    p.add_argument("--port", type=int, default=None, help="listen port (default: [collector] port)")

    p = add(
        "pos",
        cmd_pos,
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
        cmd_replay,
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
        cmd_report,
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
        cmd_simulate,
        "Generate simulated customer journeys as JSON Lines or into Kafka "
        "(`journey simulate --help` lists the options).",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for stream.simulator")

    p = add(
        "demo",
        cmd_demo,
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

    add("topics", cmd_topics, "Create every topic the engine uses (idempotent).")
    p = add(
        "config",
        cmd_config,
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


if __name__ == "__main__":
    sys.exit(main())
