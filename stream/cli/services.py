"""The long-running processes: worker, dispatcher, collector, POS producer, demo.

Each command resolves the broker, checks the secrets its role needs and
starts the service in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace

from stream.cli.environment import resolve_broker
from stream.security import require_secrets
from stream.settings import Settings


def quiet_client_logs(level: str) -> None:
    """Kafka client libraries log per message at DEBUG; never pay for that on the hot path."""
    floor = max(logging.INFO, logging.getLevelName(level.upper()))
    for name in ("aiokafka", "kafka", "faust.topics", "faust.transport"):
        logging.getLogger(name).setLevel(floor)


def use_uvloop() -> None:
    """Run the worker and the dispatcher on uvloop when installed (not on Windows).

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


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from stream.demo import run_demo

    return run_demo(settings, duration_s=args.duration, rate=args.rate, workdir=args.workdir)
