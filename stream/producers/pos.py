"""In-store POS producer: CSV / JSON Lines transaction exports -> ``touchpoints``.

Where a shop-floor event enters the engine. Three layers, top to bottom:

- :func:`row_to_touchpoint`, pure: one export row (a mapping of column -> value)
  becomes one validated :class:`~stream.contract.Touchpoint` or raises
  :class:`~stream.contract.InvalidTouchpoint` with a precise reason.
- :func:`iter_rows`: reads a CSV or JSON Lines export into rows, numbered by
  physical line, remembering the byte offset after each row.
- :class:`PosProducer`: publishes rows in batches and, once the broker has
  acknowledged a batch, records how far it got in a checkpoint file, so a
  restart resends nothing that was acknowledged. Malformed rows go to a reject
  file (JSON Lines) and the rest keeps flowing. ``follow`` tails growing files.

A re-sent row carries the same ``event_id`` (``pos:{store}:{register}:{receipt}:
{sale|refund}``), so anything sent twice after a crash between the broker's
acknowledgement and the checkpoint write is dropped by the ingest dedupe.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import math
import os
import re
import select
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import orjson
from kafka.errors import KafkaError

from stream import contract
from stream.contract import DEFAULT_LIMITS, EventTimeWindow, InvalidTouchpoint, Limits, Touchpoint
from stream.observability import metrics
from stream.producers.publisher import Publisher, PublishError, Record, packed_records
from stream.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "pos"
SOURCE = "pos"
KIND_TYPES = {"sale": "pos_purchase", "refund": "return"}
KIND_ALIASES = {"sale": "sale", "refund": "refund", "return": "refund"}

FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
STDIN = "-"
#: How a followed file was replaced (see ``_Source.replaced``).
ROTATED = "rotated"
REWRITTEN = "rewritten"

#: Rows per acknowledged batch (and per checkpoint write).
BATCH_ROWS = 500
#: How often ``follow`` looks for appended lines when it has nothing to do.
POLL_INTERVAL_S = 0.5
READ_CHUNK_BYTES = 64 * 1024
#: A quoted CSV field may span lines; past this size the quote is taken as unterminated.
MAX_RECORD_BYTES = 1024 * 1024
CHECKPOINT_VERSION = 1

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_BOM = b"\xef\xbb\xbf"

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


def row_to_touchpoint(
    row: Mapping[str, Any], *, default_currency: str, limits: Limits = DEFAULT_LIMITS
) -> Touchpoint:
    """Map one POS export row to a validated touchpoint, held to ``limits``.

    Column names are matched case-insensitively; empty values count as
    missing. Raises :class:`InvalidTouchpoint` naming the first problem.
    """
    fields = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    store_id = _required_id(fields, "store_id")
    register = _required_id(fields, "register")
    receipt_id = _required_id(fields, "receipt_id", "order_id")
    kind = _kind(fields)
    timestamp = _timestamp(fields)
    customer_id = _optional_id(fields, "customer_id")
    loyalty_id = _optional_id(fields, "loyalty_id", "loyalty_card")
    email = _email(fields)
    if not (customer_id or loyalty_id or email):
        raise InvalidTouchpoint(
            "no customer identifier: one of customer_id, loyalty_id (loyalty_card) "
            "or email is required",
            "customer_id",
        )
    refund = kind == "refund"
    products = _items(_first(fields, "items", "products"), refund=refund)
    value = _total(fields, products, refund=refund)
    currency = _currency(_first(fields, "currency"), default_currency)
    properties: dict[str, Any] = {
        "store_id": store_id,
        "register": register,
        "order_id": receipt_id,
        "products": products,
        "value": value,
        "currency": currency,
    }
    if loyalty_id:
        properties["loyalty_id"] = loyalty_id
    if email:
        properties["email"] = email
    return contract.parse(
        {
            "event_id": pos_event_id(store_id, register, receipt_id, kind),
            "type": KIND_TYPES[kind],
            "channel": CHANNEL,
            "timestamp": timestamp,
            "customer_id": customer_id,
            "properties": properties,
            "source": SOURCE,
        },
        limits,
    )


def pos_event_id(store_id: str, register: str, receipt_id: str, kind: str) -> str:
    """``pos:{store}:{register}:{receipt}:{kind}``; ``%`` and ``:`` inside ids are escaped."""
    parts = (p.replace("%", "%25").replace(":", "%3A") for p in (store_id, register, receipt_id))
    return ":".join(("pos", *parts, kind))


def _first(fields: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = fields.get(name)
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            return value
    return None


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} (or {', '.join(names[1:])})"


def _optional_id(fields: Mapping[str, Any], *names: str) -> str | None:
    value = _first(fields, *names)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidTouchpoint(
            f"{_names(names)} must be text, got {type(value).__name__}", names[0]
        )
    return value


def _required_id(fields: Mapping[str, Any], *names: str) -> str:
    value = _optional_id(fields, *names)
    if value is None:
        raise InvalidTouchpoint(f"{_names(names)} is required", names[0])
    return value


def _kind(fields: Mapping[str, Any]) -> str:
    value = _first(fields, "kind", "type")
    if value is None:
        return "sale"
    kind = KIND_ALIASES.get(str(value).lower()) if isinstance(value, str) else None
    if kind is None:
        raise InvalidTouchpoint(f"kind must be sale or refund, got {str(value)[:32]!r}", "kind")
    return kind


def _timestamp(fields: Mapping[str, Any]) -> int:
    value = _first(fields, "timestamp")
    if value is None:
        raise InvalidTouchpoint("timestamp is required", "timestamp")
    if isinstance(value, str) and _NUMBER.match(value):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    return contract.parse_timestamp(value)


def _email(fields: Mapping[str, Any]) -> str | None:
    value = _first(fields, "email")
    if value is None:
        return None
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise InvalidTouchpoint(f"email {str(value)[:64]!r} is not an email address", "email")
    return value.lower()


def _currency(value: Any, default: str) -> str:
    code = default if value is None else value
    if not isinstance(code, str) or not _CURRENCY.match(code):
        raise InvalidTouchpoint(
            f"currency {str(code)[:16]!r} is not a 3-letter code like EUR", "currency"
        )
    return code.upper()


def _number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.match(text):
            return None
        value = float(text)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _items(value: Any, *, refund: bool) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        if value.startswith("["):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidTouchpoint(
                    f"items is not a valid JSON array: {exc}", "items"
                ) from None
        else:
            return [_compact_item(i, seg, refund) for i, seg in enumerate(_segments(value))]
    if not isinstance(value, list):
        raise InvalidTouchpoint(
            "items must be an array of {sku, name, price, quantity} or SKU:QTY:PRICE[:NAME] text",
            "items",
        )
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidTouchpoint(f"items[{i}] must be an object", "items")
        quantity = item.get("quantity", item.get("qty", 1))
        out.append(_item(i, item.get("sku"), item.get("name"), item.get("price"), quantity, refund))
    return out


def _segments(text: str) -> list[str]:
    return [seg.strip() for seg in text.split(";") if seg.strip()]


def _compact_item(i: int, segment: str, refund: bool) -> dict[str, Any]:
    parts = [p.strip() for p in segment.split(":", 3)]
    if len(parts) < 3:
        raise InvalidTouchpoint(f"items[{i}] {segment[:64]!r} is not SKU:QTY:PRICE[:NAME]", "items")
    name = parts[3] if len(parts) == 4 else None
    return _item(i, parts[0], name, parts[2], parts[1], refund)


def _item(i: int, sku: Any, name: Any, price: Any, quantity: Any, refund: bool) -> dict[str, Any]:
    if isinstance(sku, int) and not isinstance(sku, bool):
        sku = str(sku)
    if not isinstance(sku, str) or not sku.strip():
        raise InvalidTouchpoint(f"items[{i}] has no sku", "items")
    sku = sku.strip()
    qty = _number(quantity)
    if qty is None or not qty.is_integer():
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) quantity {str(quantity)[:32]!r} is not a whole number", "items"
        )
    if price is None or price == "":
        raise InvalidTouchpoint(f"items[{i}] ({sku}) has no price", "items")
    unit = _number(price)
    if unit is None:
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) price {str(price)[:32]!r} is not a number", "items"
        )
    if refund:
        qty, unit = abs(qty), abs(unit)
    if qty <= 0:
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) quantity must be positive, got {qty:g}", "items"
        )
    if unit < 0:
        raise InvalidTouchpoint(f"items[{i}] ({sku}) price must not be negative", "items")
    if name is not None and not isinstance(name, str):
        raise InvalidTouchpoint(f"items[{i}] ({sku}) name must be text", "items")
    return {"sku": sku, "name": (name or "").strip() or sku, "price": unit, "quantity": int(qty)}


def _total(fields: Mapping[str, Any], products: list[dict[str, Any]], *, refund: bool) -> float:
    value = _first(fields, "total")
    if value is None:
        if not products:
            raise InvalidTouchpoint("total is required when there are no items", "total")
        return round(sum(p["price"] * p["quantity"] for p in products), 2)
    total = _number(value)
    if total is None:
        raise InvalidTouchpoint(f"total {str(value)[:32]!r} is not a number", "total")
    if refund:
        return abs(total)
    if total < 0:
        raise InvalidTouchpoint("total must not be negative for a sale (use kind=refund)", "total")
    return total


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


def _file_reader(fh: Any) -> Callable[[], bytes | None]:
    return lambda: fh.read(READ_CHUNK_BYTES)


def _stdin_reader(stop: threading.Event) -> Callable[[], bytes | None]:
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
        reader = ExportReader(STDIN, fmt, _stdin_reader(threading.Event()))
        for row in reader.rows(final=True):
            yield row.line, row.row, row.raw
        return
    with open(path, "rb", buffering=0) as fh:
        reader = ExportReader(str(path), fmt, _file_reader(fh))
        for row in reader.rows(final=True):
            yield row.line, row.row, row.raw


class CheckpointError(ValueError):
    """The checkpoint file exists but cannot be understood."""


@dataclass(frozen=True)
class FilePosition:
    """How far one file was read and acknowledged, and what identifies the file."""

    inode: int
    first_line_sha256: str
    offset: int
    line: int
    rows: int
    #: The last acknowledged row's bytes, re-checked on resume to notice a replaced file.
    last_row_start: int
    last_row_sha256: str


class Checkpoint:
    """File positions by absolute path, in a JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, FilePosition] = {}
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
                self.files = {k: FilePosition(**v) for k, v in data["files"].items()}
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(
                    f"checkpoint {path} is unreadable ({exc}); move it away to start over"
                ) from None

    def get(self, key: str) -> FilePosition | None:
        return self.files.get(key)

    def put(self, key: str, position: FilePosition) -> None:
        self.files[key] = position
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": CHECKPOINT_VERSION,
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _sha256_range(fh: Any, start: int, end: int) -> str:
    return hashlib.sha256(os.pread(fh.fileno(), end - start, start)).hexdigest()


def _first_line_sha256(fh: Any) -> str:
    head = os.pread(fh.fileno(), READ_CHUNK_BYTES, 0)
    nl = head.find(b"\n")
    return hashlib.sha256(head if nl < 0 else head[: nl + 1]).hexdigest()


def _still_same_file(fh: Any, pos: FilePosition) -> bool:
    st = os.fstat(fh.fileno())
    return (
        st.st_ino == pos.inode
        and st.st_size >= pos.offset
        and _first_line_sha256(fh) == pos.first_line_sha256
        and _sha256_range(fh, pos.last_row_start, pos.offset) == pos.last_row_sha256
    )


def find_exports(
    paths: Iterable[str | Path],
    fmt: str | None = None,
    *,
    exclude: Iterable[Path] = (),
    missing_ok: bool = False,
) -> list[tuple[str, str]]:
    """``(absolute path or "-", format)`` for every export named; folders in name order.

    A folder contributes its own ``.csv``/``.jsonl``/``.ndjson``/``.json``
    files (not sub-folders), except the ``exclude`` paths (the producer's own
    checkpoint and reject files). Raises ``ValueError`` for a missing path
    unless ``missing_ok``, and for a format it cannot tell.
    """
    skip = {Path(p).resolve() for p in exclude}
    out: dict[str, str] = {}
    for given in paths:
        if str(given) == STDIN:
            out[STDIN] = detect_format(STDIN, fmt)
            continue
        path = Path(given).resolve()
        if path.is_dir():
            for child in sorted(path.iterdir(), key=lambda p: p.name):
                if child.is_file() and child.suffix.lower() in EXTENSIONS and child not in skip:
                    out.setdefault(str(child), detect_format(child, fmt))
        elif path.is_file():
            out.setdefault(str(path), detect_format(path, fmt))
        elif not missing_ok:
            raise ValueError(f"no such file or folder: {given}")
    return list(out.items())


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
                _first_line_sha256(self.fh) != self.first_line_sha256
                or _sha256_range(self.fh, start, end) != digest
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
            return _Source(key, fmt, ExportReader(key, fmt, _stdin_reader(stop)))
        fh = open(key, "rb", buffering=0)  # noqa: SIM115 - closed by _Source.close
        st = os.fstat(fh.fileno())
        source = _Source(key, fmt, ExportReader(key, fmt, _file_reader(fh)), fh, inode=st.st_ino)
        known = checkpoint.get(key)
        if known is not None and known.offset > 0:
            if _still_same_file(fh, known):
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
            source.first_line_sha256 = _first_line_sha256(source.fh)
        position = FilePosition(
            inode=source.inode,
            first_line_sha256=source.first_line_sha256,
            offset=last.end,
            line=last.end_line,
            rows=source.rows,
            last_row_start=last.start,
            last_row_sha256=_sha256_range(source.fh, last.start, last.end),
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
