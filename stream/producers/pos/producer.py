"""The POS producer loop: export rows -> acknowledged batches on ``touchpoints``.

:class:`PosProducer` reads each export (:mod:`.reader`), maps its rows
(:mod:`.rows`), publishes them in batches and, once the broker acknowledged a
batch, moves the file's checkpoint (:mod:`.checkpoint`) past it: a restart
resends nothing acknowledged. Malformed rows go to a reject file (JSON Lines)
and the rest keeps flowing. With ``follow`` it tails growing files, notices
files rotated or rewritten in place, and picks up new files in folders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from stream import contract
from stream.contract import EventTimeWindow, InvalidTouchpoint, Touchpoint
from stream.observability import metrics
from stream.producers.pos.checkpoint import (
    Checkpoint,
    FilePosition,
    find_exports,
    first_line_sha256,
    sha256_range,
    still_same_file,
)
from stream.producers.pos.reader import (
    POLL_INTERVAL_S,
    STDIN,
    ExportReader,
    ExportRow,
    file_reader,
    stdin_reader,
)
from stream.producers.pos.rows import row_to_touchpoint
from stream.producers.publisher import Record, packed_records
from stream.settings import Settings

log = logging.getLogger(__name__)

#: How a followed file was replaced (see ``_Source.replaced``).
ROTATED = "rotated"
REWRITTEN = "rewritten"

#: Rows per acknowledged batch (and per checkpoint write).
BATCH_ROWS = 500


@dataclass
class PosReport:
    """What one run did. ``skipped_already_sent``: rows a previous run had acknowledged."""

    read: int = 0
    published: int = 0
    rejected: int = 0
    skipped_already_sent: int = 0
    files: int = 0

    def to_json(self, **extra: Any) -> str:
        return orjson.dumps({**asdict(self), **extra}).decode()


@dataclass
class _Source:
    key: str  # absolute path, or "-"
    fmt: str
    reader: ExportReader
    fh: Any = None
    rows: int = 0
    inode: int = 0
    first_line_sha256: str = ""
    #: The last acknowledged row's byte range and hash, re-checked while following.
    last_row: tuple[int, int, str] | None = None

    @property
    def is_stdin(self) -> bool:
        return self.fh is None

    def replaced(self) -> str | None:
        """``rotated`` (the path names another file), ``rewritten`` (this file shrank,
        or the bytes already read changed in place), else None."""
        try:
            st = os.stat(self.key)
        except FileNotFoundError:
            return ROTATED
        if st.st_ino != self.inode:
            return ROTATED
        if st.st_size < self.reader.offset:
            return REWRITTEN
        if self.fh is not None and self.last_row is not None:
            start, end, digest = self.last_row
            if (
                first_line_sha256(self.fh) != self.first_line_sha256
                or sha256_range(self.fh, start, end) != digest
            ):
                return REWRITTEN
        return None

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class AckedSender(Protocol):
    """What the producer needs of :class:`~stream.producers.publisher.Publisher`."""

    def send_and_wait(self, records: Iterable[Record]) -> int: ...


class PosProducer:
    """Publishes POS exports to ``settings.topics.touchpoints``, resumably.

    ``publisher.send_and_wait`` must return only once the broker acknowledged
    (see :class:`~stream.producers.publisher.Publisher`); the checkpoint moves
    only after that.
    """

    def __init__(
        self,
        settings: Settings,
        publisher: AckedSender,
        *,
        batch_rows: int = BATCH_ROWS,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.settings = settings
        self.publisher = publisher
        self.batch_rows = batch_rows
        self.poll_interval_s = poll_interval_s
        self.checkpoint_path = settings.path(settings.pos.checkpoint)
        self.rejects_path = settings.path(settings.pos.rejects)
        #: Counts of the current (or last) run; readable while it runs.
        self.report = PosReport()
        self._partitions: int | None = None
        j = settings.journey
        #: A sale's time is held to the window around when the row is read.
        self.window = EventTimeWindow.of_seconds(j.max_future_s, j.max_past_s)

    def run(
        self,
        paths: Sequence[str | Path],
        follow: bool = False,
        fmt: str | None = None,
        stop_event: threading.Event | None = None,
        max_rows: int | None = None,
    ) -> PosReport:
        """Publish every row of ``paths`` (files, folders, ``-``) not yet acknowledged.

        With ``follow``, keeps reading lines appended to the files (and new
        files in the folders) until ``stop_event`` is set. Stops after
        ``max_rows`` rows when given. Raises :class:`PublishError` when the
        broker does not acknowledge (the checkpoint keeps the last good batch),
        ``ValueError`` for unusable paths or checkpoint.
        """
        if isinstance(paths, str | Path):
            paths = [paths]
        stop = stop_event or threading.Event()
        self.report = report = PosReport()
        checkpoint = Checkpoint(self.checkpoint_path)
        specs = self._expand(paths, fmt)
        folders = [p for p in paths if str(p) != STDIN and Path(p).is_dir()]
        sources: dict[str, _Source] = {}
        done: set[str] = set()
        try:
            while True:
                progressed = 0
                for key, file_fmt in specs:
                    if key in done or self._stopping(stop, max_rows):
                        continue
                    source = sources.get(key)
                    if source is None:
                        source = sources[key] = self._open(key, file_fmt, checkpoint, stop)
                    final = not follow or source.is_stdin
                    how = None if final else source.replaced()
                    if how == REWRITTEN:
                        # Rewritten in place: the old offset means nothing in the new
                        # content, not even for the lines past it. Read it again from
                        # its start (sales keep their ids: ingest drops those sent).
                        source.close()
                        del sources[key]
                        log.info("pos: %s was rewritten; reading it from the start", key)
                        continue
                    count = self._drain(source, checkpoint, final or how == ROTATED, stop, max_rows)
                    progressed += count
                    if final:
                        source.close()
                        del sources[key]
                        done.add(key)
                    elif how == ROTATED:
                        # The old file's rest is taken; the new one opens from its start.
                        source.close()
                        del sources[key]
                        log.info("pos: %s was rotated; reading the new file from the start", key)
                if not follow or self._stopping(stop, max_rows):
                    return report
                # A watched folder may gain files later, even when it is empty now.
                if not folders and not any(k != STDIN and k not in done for k, _ in specs):
                    return report
                if not progressed:
                    stop.wait(self.poll_interval_s)
                # Folders may have gained files; a file being rotated may be missing a moment.
                specs = self._expand(paths, fmt, missing_ok=True)
                for key in set(sources) - {k for k, _ in specs}:
                    sources.pop(key).close()
        finally:
            for source in sources.values():
                source.close()

    def _stopping(self, stop: threading.Event, max_rows: int | None) -> bool:
        return stop.is_set() or (max_rows is not None and self.report.read >= max_rows)

    def _expand(
        self, paths: Iterable[str | Path], fmt: str | None, missing_ok: bool = False
    ) -> list[tuple[str, str]]:
        own = (self.checkpoint_path, self.rejects_path)
        return find_exports(paths, fmt, exclude=own, missing_ok=missing_ok)

    def _open(self, key: str, fmt: str, checkpoint: Checkpoint, stop: threading.Event) -> _Source:
        self.report.files += 1
        if key == STDIN:
            return _Source(key, fmt, ExportReader(key, fmt, stdin_reader(stop)))
        fh = open(key, "rb", buffering=0)  # noqa: SIM115 - closed by _Source.close
        st = os.fstat(fh.fileno())
        source = _Source(key, fmt, ExportReader(key, fmt, file_reader(fh)), fh, inode=st.st_ino)
        known = checkpoint.get(key)
        if known is not None and known.offset > 0:
            if still_same_file(fh, known):
                if fmt == "csv":
                    source.reader.read_header()
                fh.seek(known.offset)
                source.reader.reposition(known.offset, known.line)
                source.rows = known.rows
                source.first_line_sha256 = known.first_line_sha256
                source.last_row = (known.last_row_start, known.offset, known.last_row_sha256)
                self.report.skipped_already_sent += known.rows
                log.info(
                    "pos: resuming %s after line %d (%d rows sent before)",
                    key,
                    known.line,
                    known.rows,
                )
            else:
                log.warning(
                    "pos: %s was replaced since the checkpoint; reading it from the start", key
                )
        return source

    def _drain(
        self,
        source: _Source,
        checkpoint: Checkpoint,
        final: bool,
        stop: threading.Event,
        max_rows: int | None,
    ) -> int:
        """Publish the rows available now in batches; returns how many were read."""
        rows = source.reader.rows(final)
        batch: list[ExportRow] = []
        count = 0
        while not stop.is_set() and (max_rows is None or self.report.read < max_rows):
            row = next(rows, None)
            if row is None:
                break
            batch.append(row)
            count += 1
            self.report.read += 1
            if len(batch) >= self.batch_rows:
                self._commit(source, checkpoint, batch)
                batch = []
        self._commit(source, checkpoint, batch)
        return count

    def _records(self, topic: str, tps: list[Touchpoint]) -> list[Record]:
        """A batch's sales packed per destination partition (see ``stream.contract``),
        or one record each when the publisher cannot tell the partition count."""
        if self._partitions is None:
            count = getattr(self.publisher, "partition_count", None)
            self._partitions = count(topic) if count is not None else 0
        if self._partitions:
            return packed_records(topic, tps, self._partitions)
        return [(topic, tp.routing_key.encode(), contract.dumps(tp)) for tp in tps]

    def _commit(self, source: _Source, checkpoint: Checkpoint, batch: list[ExportRow]) -> None:
        """Send a batch, wait for the acks, write its rejects, then move the checkpoint."""
        if not batch:
            return
        topic = self.settings.topics.touchpoints
        currency = self.settings.pos.default_currency
        tps: list[Touchpoint] = []
        rejects: list[tuple[ExportRow, str]] = []
        limits = self.settings.limits
        read_at = int(time.time() * 1000)
        for row in batch:
            if isinstance(row.row, InvalidTouchpoint):
                rejects.append((row, row.row.reason))
                continue
            try:
                tp = row_to_touchpoint(row.row, default_currency=currency, limits=limits)
                self.window.check(tp.timestamp, read_at)
            except InvalidTouchpoint as exc:
                rejects.append((row, exc.reason))
                continue
            tps.append(tp)
        if tps:
            self.publisher.send_and_wait(self._records(topic, tps))
            self.report.published += len(tps)
            metrics.POS_ROWS.labels(outcome="published").inc(len(tps))
        if rejects:
            self._write_rejects(source.key, rejects)
            self.report.rejected += len(rejects)
            metrics.POS_ROWS.labels(outcome="rejected").inc(len(rejects))
        source.rows += len(batch)
        if source.is_stdin:
            return
        last = batch[-1]
        if not source.first_line_sha256:
            source.first_line_sha256 = first_line_sha256(source.fh)
        position = FilePosition(
            inode=source.inode,
            first_line_sha256=source.first_line_sha256,
            offset=last.end,
            line=last.end_line,
            rows=source.rows,
            last_row_start=last.start,
            last_row_sha256=sha256_range(source.fh, last.start, last.end),
        )
        source.last_row = (last.start, last.end, position.last_row_sha256)
        checkpoint.put(source.key, position)

    def _write_rejects(self, key: str, rejects: list[tuple[ExportRow, str]]) -> None:
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        max_bytes = self.settings.limits.dead_letter_bytes
        with open(self.rejects_path, "ab") as fh:
            for row, reason in rejects:
                entry = reject_entry(key, row, reason, max_bytes)
                fh.write(orjson.dumps(entry) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())


def reject_entry(key: str, row: ExportRow, reason: str, max_bytes: int) -> dict[str, Any]:
    """A reject file entry: the row's text, cut past ``max_bytes`` (as a dead letter is:
    the original's size and SHA-256 beside it)."""
    entry: dict[str, Any] = {
        "file": key,
        "line": row.line,
        "reason": contract.reason_text(reason),
        "raw": row.raw,
    }
    data = row.raw.encode(errors="replace")
    value, cut = contract.dead_letter(data, max_bytes)
    if row.size is not None:
        # Too long to have been held: raw is already a prefix; size and hash are the line's.
        cut = {
            "truncated": b"prefix",
            "original_bytes": str(row.size).encode(),
            "original_sha256": (row.sha256 or "").encode(),
        }
    if cut:
        entry["raw"] = value.decode(errors="ignore")
        entry.update({name: head.decode() for name, head in cut.items()})
    return entry
