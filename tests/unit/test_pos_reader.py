"""Reading POS exports: CSV / JSON Lines bytes -> numbered rows (no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import InvalidTouchpoint, Touchpoint
from stream.producers.pos.reader import ExportReader, detect_format, iter_rows
from stream.producers.pos.rows import row_to_touchpoint
from tests.helpers import REPO as ROOT

SAMPLE = ROOT / "config" / "pos-sample.csv"


def to_tp(row: dict[str, Any], currency: str = "EUR") -> Touchpoint:
    return row_to_touchpoint(row, default_currency=currency)


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


HEADER = "store_id,register,receipt_id,timestamp,customer_id,items,total\n"


def test_csv_rows_are_numbered_by_physical_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.csv",
        HEADER
        + "S1,1,R1,2024-01-01T00:00:00Z,C1,A:1:2,\n"
        + "\n"
        + 'S1,1,R2,2024-01-01T00:00:00Z,C1,"A:1:2;\nB:1:3",\n'
        + "S1,1,R3,2024-01-01T00:00:00Z,C1,A:1:2",
    )
    rows = list(iter_rows(path))
    assert [n for n, _, _ in rows] == [2, 4, 6]
    assert rows[0][1] == {
        "store_id": "S1",
        "register": "1",
        "receipt_id": "R1",
        "timestamp": "2024-01-01T00:00:00Z",
        "customer_id": "C1",
        "items": "A:1:2",
        "total": "",
    }
    assert rows[1][1]["items"] == "A:1:2;\nB:1:3"  # type: ignore[index]
    assert rows[2][2] == "S1,1,R3,2024-01-01T00:00:00Z,C1,A:1:2"
    assert to_tp(rows[1][1]).properties["value"] == 5.0  # type: ignore[arg-type]


def test_csv_with_bom_and_crlf(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + HEADER.replace("\n", "\r\n").encode()
    data += b"S1,1,R1,2024-01-01T00:00:00Z,C1,A:1:2,\r\n"
    (row,) = list(iter_rows(write(tmp_path, "x.csv", data)))
    assert row[0] == 2
    assert row[1]["store_id"] == "S1"  # type: ignore[index]
    assert row[2] == "S1,1,R1,2024-01-01T00:00:00Z,C1,A:1:2,"


def test_csv_row_with_wrong_field_count_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", HEADER + "S1,1,R1\n")
    ((line, error, raw),) = list(iter_rows(path))
    assert line == 2
    assert isinstance(error, InvalidTouchpoint)
    assert error.reason == "row has 3 fields, the header has 7"
    assert raw == "S1,1,R1"


def test_csv_unterminated_quote_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", HEADER + 'S1,1,R1,"oops\nmore\n')
    ((line, error, _),) = list(iter_rows(path))
    assert line == 2
    assert isinstance(error, InvalidTouchpoint)
    assert "unterminated quoted field" in error.reason


def test_a_runaway_quote_costs_one_line_not_the_rest_of_the_file(tmp_path: Path) -> None:
    good = "S1,1,R1,2024-01-01T00:00:00Z,C1,A:1:2,\n"
    path = write(tmp_path, "x.csv", HEADER + 'S1,1,R0,"oops\n' + good * 5000)
    rows = list(iter_rows(path))
    assert isinstance(rows[0][1], InvalidTouchpoint)
    assert rows[0][1].reason == "unterminated quoted field"
    assert rows[0][0] == 2
    assert rows[0][2] == 'S1,1,R0,"oops'
    assert len(rows) == 5001
    assert all(isinstance(row, dict) for _, row, _ in rows[1:])


def test_invalid_utf8_is_an_error_for_that_line_only(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", b'{"a": "\xff"}\n{"a": 1}\n')
    rows = list(iter_rows(path))
    assert isinstance(rows[0][1], InvalidTouchpoint)
    assert "not valid UTF-8" in rows[0][1].reason
    assert rows[1][:2] == (2, {"a": 1})


def test_json_lines_skip_blank_lines_and_report_bad_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "x.ndjson", '{"a": 1}\n\n  \n{"a": \n[1, 2]\n{"b": 2}')
    rows = list(iter_rows(path))
    assert [n for n, _, _ in rows] == [1, 4, 5, 6]
    assert rows[0][1] == {"a": 1}
    assert isinstance(rows[1][1], InvalidTouchpoint)
    assert rows[1][1].reason.startswith("not valid JSON")
    assert isinstance(rows[2][1], InvalidTouchpoint)
    assert rows[2][1].reason == "expected a JSON object, got list"
    assert rows[3][1] == {"b": 2}


def test_format_by_extension_or_explicit(tmp_path: Path) -> None:
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.json") == "jsonl"
    assert detect_format("a.txt", "csv") == "csv"
    with pytest.raises(ValueError, match="pass --format"):
        detect_format("a.txt")
    with pytest.raises(ValueError, match="needs --format"):
        detect_format("-")
    rows = list(iter_rows(write(tmp_path, "export.txt", '{"a": 1}\n'), "jsonl"))
    assert rows == [(1, {"a": 1}, '{"a": 1}')]


def test_sample_export_has_no_rejects() -> None:
    tps = [to_tp(row) for _, row, _ in iter_rows(SAMPLE) if isinstance(row, dict)]
    assert len(tps) == sum(1 for _ in iter_rows(SAMPLE)) == 20
    assert {tp.type for tp in tps} == {"pos_purchase", "return"}
    assert len({tp.event_id for tp in tps}) == 20


class Feed:
    """Bytes arriving in pieces, as a file a writer is still appending to."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def __call__(self) -> bytes:
        return self.pending.pop(0) if self.pending else b""


def test_a_half_written_line_waits_for_its_newline() -> None:
    feed = Feed()
    reader = ExportReader("x.csv", "csv", feed)
    first = b"S1,1,R1,2024-01-01T00:00:00Z,C1,A:1:2,\n"
    feed.pending += [HEADER.encode(), first + b"S1,1,R2,2024"]
    assert [r.line for r in reader.rows(final=False)] == [2]
    assert reader.offset == len(HEADER) + len(first)
    feed.pending.append(b'-01-01T00:00:00Z,C1,"A:1:2;\n')
    assert list(reader.rows(final=False)) == []  # quoted field still open
    feed.pending.append(b'B:1:1",\n')
    (row,) = list(reader.rows(final=False))
    assert row.line == 3
    assert row.end_line == 4
    assert isinstance(row.row, dict)
    assert row.row["items"] == "A:1:2;\nB:1:1"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["csv", "jsonl"]))
def test_any_bytes_read_without_crashing(data: bytes, fmt: str) -> None:
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    reader = ExportReader("x", fmt, lambda: chunks.pop(0) if chunks else b"")
    rows = list(reader.rows(final=True))
    assert reader.offset == len(data)
    for row in rows:
        assert isinstance(row.row, dict | InvalidTouchpoint)
        assert row.start < row.end <= len(data)
