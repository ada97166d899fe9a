"""In-store POS producer: CSV / JSON Lines transaction exports -> ``touchpoints``.

Where a shop-floor event enters the engine. One module per layer, top to bottom:

- :mod:`.cli`: ``journey pos`` (options, signals, the one-line report).
- :mod:`.producer`: :class:`PosProducer` publishes rows in batches and, once
  the broker has acknowledged a batch, records how far it got, so a restart
  resends nothing that was acknowledged; malformed rows go to a reject file.
- :mod:`.checkpoint`: the checkpoint file and what identifies a file in it.
- :mod:`.reader`: CSV or JSON Lines bytes -> rows numbered by physical line,
  with the byte offset after each.
- :mod:`.rows`, pure: one export row -> one validated touchpoint, or the reason not.

A re-sent row carries the same ``event_id`` (``pos:{store}:{register}:{receipt}:
{sale|refund}``), so anything sent twice after a crash between the broker's
acknowledgement and the checkpoint write is dropped by the ingest dedupe.
"""

from stream.producers.pos.checkpoint import Checkpoint, CheckpointError, FilePosition, find_exports
from stream.producers.pos.cli import DESCRIPTION, EPILOG, HELP, add_arguments, main
from stream.producers.pos.producer import (
    BATCH_ROWS,
    AckedSender,
    PosProducer,
    PosReport,
    reject_entry,
)
from stream.producers.pos.reader import (
    EXTENSIONS,
    FORMATS,
    MAX_RECORD_BYTES,
    POLL_INTERVAL_S,
    STDIN,
    ExportReader,
    ExportRow,
    detect_format,
    iter_rows,
)
from stream.producers.pos.rows import CHANNEL, SOURCE, pos_event_id, row_to_touchpoint

__all__ = [
    "BATCH_ROWS",
    "CHANNEL",
    "DESCRIPTION",
    "EPILOG",
    "EXTENSIONS",
    "FORMATS",
    "HELP",
    "MAX_RECORD_BYTES",
    "POLL_INTERVAL_S",
    "SOURCE",
    "STDIN",
    "AckedSender",
    "Checkpoint",
    "CheckpointError",
    "ExportReader",
    "ExportRow",
    "FilePosition",
    "PosProducer",
    "PosReport",
    "add_arguments",
    "detect_format",
    "find_exports",
    "iter_rows",
    "main",
    "pos_event_id",
    "reject_entry",
    "row_to_touchpoint",
]
