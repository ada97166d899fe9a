"""Event logs offline: ``journey simulate`` writes them, ``replay`` and ``report`` read them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stream.cli.environment import resolve_broker
from stream.settings import Settings


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
