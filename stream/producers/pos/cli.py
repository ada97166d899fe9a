"""``journey pos``: its options, the run with a broker, signals, the one-line report.

:func:`add_arguments` declares the options (and the epilog listing the
columns); :func:`main` builds the publisher, runs :class:`PosProducer` on a
thread so SIGINT/SIGTERM only set a stop event (the batch in flight finishes
and is checkpointed), prints the report and maps failures to exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import FrameType

from kafka.errors import KafkaError

from stream.producers.pos.checkpoint import find_exports
from stream.producers.pos.producer import PosProducer
from stream.producers.pos.reader import FORMATS, POLL_INTERVAL_S
from stream.producers.publisher import Publisher, PublishError
from stream.settings import Settings

log = logging.getLogger(__name__)

HELP = "publish in-store POS transactions from CSV or JSON Lines exports"

DESCRIPTION = (
    "Publish in-store POS transactions to the touchpoints topic from CSV or JSON Lines "
    "exports (one transaction per row): files, folders of them, or stdin."
)

EPILOG = """\
columns (CSV header) or keys (JSON Lines) of a row:
  store_id, register        where the transaction happened (required)
  receipt_id                receipt number (alias: order_id; required)
  timestamp                 RFC 3339 with offset, or epoch milliseconds
  customer_id | loyalty_id | email
                            at least one (loyalty_id alias: loyalty_card)
  items                     JSON Lines: array of {sku, name, price, quantity};
                            CSV: the same JSON array, or compact text
                            SKU:QTY:PRICE[:NAME];SKU:QTY:PRICE...
  total                     amount paid (default: sum of price x quantity)
  currency                  3-letter code (default: [pos] default_currency)
  kind (or type)            sale (default) or refund
Sales become pos_purchase touchpoints, refunds return touchpoints (refund
amounts may be written positive or negative).

resumable: after every batch the broker acknowledged, the byte offset and line
reached in each file are written to the checkpoint file; run the same command
again and it continues after the last acknowledged row (a file replaced by a
different one under the same name is read from its start). Rows are never
lost; after a crash a few may be sent twice and are de-duplicated downstream
by their event id pos:STORE:REGISTER:RECEIPT:sale|refund. Stdin (-) has no
checkpoint: piped input is sent again in full if re-run.

Malformed rows go to the reject file as JSON Lines {file, line, reason, raw};
the other rows flow. SIGINT/SIGTERM finish the current batch, write the
checkpoint and exit 0. A one-line JSON report is printed at the end.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``journey pos``; also sets the parser's epilog (columns, resumability)."""
    # The epilog is a laid-out table, so the formatter must keep line breaks;
    # a one-line description is wrapped here instead.
    description = parser.description or DESCRIPTION
    parser.description = description if "\n" in description else textwrap.fill(description, 78)
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="CSV (.csv) or JSON Lines (.jsonl, .ndjson, .json) export, a folder of them "
        "(read in name order), or - for stdin (needs --format; no checkpoint)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep running and publish lines appended to the files (and new files in the "
        "folders) until SIGINT/SIGTERM; a line is read once its newline is written",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="input format (default: by extension)"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        default=None,
        help="where acknowledged positions are kept (default: [pos] checkpoint)",
    )
    parser.add_argument(
        "--rejects",
        metavar="FILE",
        default=None,
        help="JSON Lines file for malformed rows (default: [pos] rejects)",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journey pos``: 0 done or stopped, 1 broker failure, 2 bad input or usage."""
    pos = settings.pos
    if getattr(args, "checkpoint", None):
        pos = replace(pos, checkpoint=os.path.abspath(args.checkpoint))
    if getattr(args, "rejects", None):
        pos = replace(pos, rejects=os.path.abspath(args.rejects))
    settings = replace(settings, pos=pos)
    if not settings.broker.url:
        print("journey pos: no broker configured (set JOURNEY_BROKER_URL)", file=sys.stderr)
        return 2
    try:
        find_exports(args.paths, args.format)
    except ValueError as exc:
        print(f"journey pos: {exc}", file=sys.stderr)
        return 2
    try:
        publisher = Publisher(settings.broker)
    except KafkaError as exc:
        print(f"journey pos: cannot reach the broker: {exc!r}", file=sys.stderr)
        return 1
    producer = PosProducer(settings, publisher)
    if pos.metrics_port:
        from prometheus_client import start_http_server

        # A daemon thread serving /metrics (and /) until the process exits.
        start_http_server(pos.metrics_port, addr=pos.metrics_host)
    stop = threading.Event()
    outcome: dict[str, BaseException] = {}

    def work() -> None:
        try:
            producer.run(args.paths, follow=args.follow, fmt=args.format, stop_event=stop)
        except BaseException as exc:
            outcome["error"] = exc

    # The producer runs on a thread so the signal handler (main thread) never
    # contends with it for the stop event's lock.
    worker = threading.Thread(target=work, name="journey-pos")
    try:
        with _stop_on_signals(stop):
            worker.start()
            while worker.is_alive():
                worker.join(POLL_INTERVAL_S)
    finally:
        stop.set()
        worker.join()
        publisher.close()
    error = outcome.get("error")
    if error is None:
        print(producer.report.to_json())
        return 0
    print(producer.report.to_json(error=str(error)))
    print(f"journey pos: {error}", file=sys.stderr)
    if isinstance(error, PublishError | KafkaError):
        return 1
    if isinstance(error, ValueError | OSError):
        return 2
    raise error


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the batch and stop. A second SIGINT: interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("pos: signal %d, stopping after the current batch", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
