"""Where the POS producer got to: the checkpoint file, file identity, the exports named.

:class:`Checkpoint` keeps one :class:`FilePosition` per absolute path in a JSON
file replaced atomically, written only after the broker acknowledged the rows
up to it. A position records what identifies the file (inode, first line's
hash, last acknowledged row's hash), so a resume notices a file replaced
under the same name and reads it from its start instead of skipping rows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.producers.pos.reader import EXTENSIONS, READ_CHUNK_BYTES, STDIN, detect_format

CHECKPOINT_VERSION = 1


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


def sha256_range(fh: Any, start: int, end: int) -> str:
    """Hex SHA-256 of bytes ``start`` to ``end`` of an open file (its position unmoved)."""
    return hashlib.sha256(os.pread(fh.fileno(), end - start, start)).hexdigest()


def first_line_sha256(fh: Any) -> str:
    """Hex SHA-256 of an open file's first line (of its first chunk if no newline)."""
    head = os.pread(fh.fileno(), READ_CHUNK_BYTES, 0)
    nl = head.find(b"\n")
    return hashlib.sha256(head if nl < 0 else head[: nl + 1]).hexdigest()


def still_same_file(fh: Any, pos: FilePosition) -> bool:
    """Whether the open file is the one ``pos`` was recorded for, unchanged up to it."""
    st = os.fstat(fh.fileno())
    return (
        st.st_ino == pos.inode
        and st.st_size >= pos.offset
        and first_line_sha256(fh) == pos.first_line_sha256
        and sha256_range(fh, pos.last_row_start, pos.offset) == pos.last_row_sha256
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
