"""Reading POS exports: CSV or JSON Lines bytes -> numbered rows, from a byte offset on.

:class:`ExportReader` turns a byte stream into :class:`ExportRow` values, each
with its physical line numbers and the byte offsets it spans, so the producer
can checkpoint exactly after the last acknowledged row. The CSV delimiter is
told from the header line; a line too long to hold is streamed past (hashed,
its prefix kept) and becomes one rejected row; an unterminated last line waits
for its newline unless the input is final. Rows are column mappings or the
reason they could not be read; mapping them to touchpoints is
:mod:`stream.producers.pos.rows`' job.
"""

from __future__ import annotations

import csv
import hashlib
import os
import select
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.contract import InvalidTouchpoint

FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
STDIN = "-"

#: How often ``follow`` looks for appended lines when it has nothing to do.
POLL_INTERVAL_S = 0.5
READ_CHUNK_BYTES = 64 * 1024
#: A quoted CSV field may span lines; past this size the quote is taken as unterminated.
MAX_RECORD_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One row of an export: a column mapping, or why it could not be read."""

    line: int
    row: dict[str, Any] | InvalidTouchpoint
    raw: str
    #: Byte offsets of the row in its file, and physical lines read up to its end.
    start: int
    end: int
    end_line: int
    #: For a line too long to hold, its real size and SHA-256 (``raw`` is a prefix).
    size: int | None = None
    sha256: str | None = None


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format named by the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    if str(path) == STDIN:
        raise ValueError("reading stdin (-) needs --format csv or --format jsonl")
    found = EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the format from the extension "
            f"({', '.join(EXTENSIONS)}); pass --format csv|jsonl"
        )
    return found


class ExportReader:
    """Complete rows of one CSV or JSON Lines byte stream, from a byte offset on.

    ``read`` returns newly available bytes (``b""`` at the current end, ``None``
    when interrupted). Only complete lines become rows; an unterminated last
    line becomes a row only once the end of input is final, so a line a writer
    is still appending waits for its newline.
    """

    def __init__(
        self,
        name: str,
        fmt: str,
        read: Callable[[], bytes | None],
        *,
        offset: int = 0,
        line: int = 0,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self._read = read
        self._buf = bytearray()
        self.offset = offset  # of the first byte not yet turned into a row
        self.line = line  # physical lines consumed
        self.header: list[str] | None = None
        #: The CSV delimiter, told from the header line (``,``, ``;``, tab or ``|``).
        self.delimiter: str | None = None
        self.eof = False
        #: A line longer than ``MAX_RECORD_BYTES`` being skipped (hashed, not held).
        self._skip: _LongLine | None = None

    def rows(self, final: bool) -> Iterator[ExportRow]:
        """Rows available now; with ``final`` the unterminated last line too."""
        while True:
            if self._skip is not None or (
                len(self._buf) > MAX_RECORD_BYTES and self._buf.find(b"\n") < 0
            ):
                row = self._skip_long_line(final)
                if row is None:
                    if self._fill():
                        continue
                    row = self._skip_long_line(final)
                    if row is None:
                        return
                yield row
                continue
            found = self._record_end(at_end=final and self.eof)
            if found is None:
                if self._fill():
                    continue
                found = self._record_end(at_end=final and self.eof)
                if found is None:
                    return
            row = self._take(found)
            if row is not None:
                yield row

    def _skip_long_line(self, final: bool) -> ExportRow | None:
        """Consume a line too long to hold: hash it as it streams by, keep a prefix.

        Returns its (rejected) row once its end is read, else None (more bytes needed).
        """
        skip = self._skip
        if skip is None:
            skip = self._skip = _LongLine(self.offset, self.line + 1)
        buf = self._buf
        nl = buf.find(b"\n")
        end = nl + 1 if nl >= 0 else len(buf)
        # Size and hash are of the line without its newline, as a rejected row's are.
        skip.feed(bytes(buf[: nl if nl >= 0 else end]))
        skip.consumed += end
        del buf[:end]
        if nl < 0 and not (final and self.eof):
            return None
        self._skip = None
        self.offset = skip.start + skip.consumed
        self.line += 1
        raw = bytes(skip.prefix).decode("utf-8", "replace").rstrip("\r\n")
        error = InvalidTouchpoint(
            f"line is {skip.size} bytes, longer than {MAX_RECORD_BYTES} (not read whole)"
        )
        return ExportRow(
            skip.line,
            error,
            raw,
            skip.start,
            self.offset,
            self.line,
            size=skip.size,
            sha256=skip.digest.hexdigest(),
        )

    def read_header(self) -> None:
        """Read the CSV header (the first non-blank record) when resuming mid-file."""
        while self.header is None:
            found = self._record_end(at_end=self.eof)
            if found is None:
                if self._fill():
                    continue
                found = self._record_end(at_end=self.eof)
                if found is None:
                    return
            self._take(found)

    def reposition(self, offset: int, line: int) -> None:
        """Continue at ``offset`` (the caller has moved the stream there)."""
        self._buf.clear()
        self.offset = offset
        self.line = line
        self.eof = False

    def _fill(self) -> bool:
        data = self._read()
        if data is None:
            return False
        self.eof = not data
        self._buf += data
        return bool(data)

    def _record_end(self, at_end: bool) -> _Split | None:
        """Where the next record ends in the buffer, or None until more bytes arrive."""
        buf = self._buf
        if self.fmt != "csv":
            nl = buf.find(b"\n")
            if nl >= 0:
                return _Split(nl + 1)
            return _Split(len(buf)) if at_end and buf else None
        return self._csv_record_end(at_end)

    def _csv_record_end(self, at_end: bool) -> _Split | None:
        # csv.reader pulls physical lines only while a quoted field is open, so
        # feeding it the buffer line by line finds the record's end and parses
        # it in one pass; asking for a line not yet written means: incomplete.
        buf = self._buf
        end = 0
        wanted_more = too_long = False

        def lines() -> Iterator[str]:
            nonlocal end, wanted_more, too_long
            while True:
                nl = buf.find(b"\n", end)
                if nl < 0 and not (at_end and end < len(buf)):
                    wanted_more = True
                    return
                if end > MAX_RECORD_BYTES:
                    too_long = True
                    return
                line_end = len(buf) if nl < 0 else nl + 1
                line = buf[end:line_end].decode("utf-8", "replace")
                end = line_end
                yield line

        if self.delimiter is None:
            first = buf.find(b"\n")
            if first < 0 and not (at_end and buf):
                return None  # the header line is not all here yet
            self.delimiter = _sniff_delimiter(bytes(buf[: first + 1] if first >= 0 else buf))
        try:
            values = next(csv.reader(lines(), delimiter=self.delimiter), None)
        except csv.Error as exc:
            first = buf.find(b"\n") + 1
            if 0 < first < end:
                # An open quote ran on past csv's field limit: reject its line, go on.
                return _Split(first, "unterminated quoted field")
            return _Split(end, f"not valid CSV: {exc}")
        if too_long:
            return _Split(buf.find(b"\n") + 1, "unterminated quoted field")
        if wanted_more:
            if not at_end:
                return None
            if end == 0:
                return None
            return _Split(end, "unterminated quoted field at end of file")
        return _Split(end, None, values)

    def _take(self, split: _Split) -> ExportRow | None:
        end = split.end
        chunk = bytes(self._buf[:end])
        del self._buf[:end]
        start, first_line = self.offset, self.line + 1
        self.offset += end
        self.line += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        if start == 0 and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw = chunk.decode("utf-8", "replace").rstrip("\r\n")
            error = InvalidTouchpoint(f"line is not valid UTF-8 (byte {exc.start} of the row)")
            return ExportRow(first_line, error, raw, start, self.offset, self.line)
        raw = text.rstrip("\r\n")
        if not text.strip():
            return None
        row: dict[str, Any] | InvalidTouchpoint
        if split.broken is not None:
            row = InvalidTouchpoint(split.broken)
        elif self.fmt != "csv":
            row = _json_row(text)
        elif self.header is None:
            values = split.values or []
            if values and values[0].startswith("\ufeff"):
                values[0] = values[0][1:]
            self.header = [h.strip().lower() for h in values]
            return None
        elif len(split.values or []) != len(self.header):
            n = len(split.values or [])
            row = InvalidTouchpoint(f"row has {n} fields, the header has {len(self.header)}")
        else:
            row = dict(zip(self.header, split.values or [], strict=True))
        return ExportRow(first_line, row, raw, start, self.offset, self.line)


#: CSV delimiters told from the header line; exports from European tills often use ``;``.
DELIMITERS = ",;\t|"
#: How much of a line too long to hold the reject file keeps.
LONG_LINE_PREFIX_BYTES = 64 * 1024


def _sniff_delimiter(header: bytes) -> str:
    """The delimiter of a CSV header line: the candidate that splits it most (``,`` if none)."""
    text = header.decode("utf-8", "replace").rstrip("\r\n")
    counts: dict[str, int] = {}
    for d in DELIMITERS:
        try:
            counts[d] = len(next(csv.reader([text], delimiter=d), []))
        except csv.Error:  # a stray carriage return or NUL: not this one's to judge
            counts[d] = 0
    best = max(counts.values())
    return "," if best <= 1 else next(d for d in DELIMITERS if counts[d] == best)


@dataclass
class _LongLine:
    """A line being skipped: where it started, its size, its hash, its first bytes."""

    start: int
    line: int
    size: int = 0
    #: Bytes taken off the buffer (the line and its newline).
    consumed: int = 0
    prefix: bytearray = field(default_factory=bytearray)
    digest: Any = field(default_factory=hashlib.sha256)

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self.digest.update(data)
        room = LONG_LINE_PREFIX_BYTES - len(self.prefix)
        if room > 0:
            self.prefix += data[:room]


@dataclass(frozen=True, slots=True)
class _Split:
    """The end of the next record in the buffer, why it is broken, its CSV values."""

    end: int
    broken: str | None = None
    values: list[str] | None = None


def _json_row(text: str) -> dict[str, Any] | InvalidTouchpoint:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return InvalidTouchpoint(f"not valid JSON: {exc}")
    if not isinstance(value, dict):
        return InvalidTouchpoint(f"expected a JSON object, got {type(value).__name__}")
    return value


def file_reader(fh: Any) -> Callable[[], bytes | None]:
    """An :class:`ExportReader` ``read`` over an unbuffered binary file."""
    return lambda: fh.read(READ_CHUNK_BYTES)


def stdin_reader(stop: threading.Event) -> Callable[[], bytes | None]:
    """An :class:`ExportReader` ``read`` over stdin; None once ``stop`` is set."""
    fd = sys.stdin.buffer.fileno()

    def read() -> bytes | None:
        # select with a timeout so a stop request is noticed while stdin is quiet.
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], POLL_INTERVAL_S)
            if ready:
                return os.read(fd, READ_CHUNK_BYTES)
        return None

    return read


def iter_rows(
    path: str | Path, fmt: str | None = None
) -> Iterator[tuple[int, dict[str, Any] | InvalidTouchpoint, str]]:
    """``(line_number, row_or_error, raw_line)`` for every data row of one export.

    CSV takes its header from line 1; JSON Lines holds one object per line.
    Blank lines are skipped; line numbers are physical lines. ``-`` is stdin.
    """
    fmt = detect_format(path, fmt)
    if str(path) == STDIN:
        reader = ExportReader(STDIN, fmt, stdin_reader(threading.Event()))
        for row in reader.rows(final=True):
            yield row.line, row.row, row.raw
        return
    with open(path, "rb", buffering=0) as fh:
        reader = ExportReader(str(path), fmt, file_reader(fh))
        for row in reader.rows(final=True):
            yield row.line, row.row, row.raw
