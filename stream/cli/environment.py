"""The environment the services run in: the local stack, the topics, the settings.

``journey stack``, ``journey topics`` and ``journey config``, and how the
other commands find a running stack (``var/stack.json``).
"""

from __future__ import annotations

import argparse
import json

from stream.settings import Settings, as_dict, with_environ

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


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from stream.topics import ensure_topics

    settings = resolve_broker(settings)
    topics = ensure_topics(settings)
    print(json.dumps({"created_or_present": topics}))
    return 0


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
