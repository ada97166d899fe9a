"""Table stores keep no RocksDB write-ahead log: the changelog topic is the durable copy.

``stream.app.rocksdb_without_wal`` (applied by every worker app) turns the log
off where Faust opens a partition's database; what a store holds must still be
there after it is closed and opened again (RocksDB flushes its memtables on close).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from faust.stores.rocksdb import RocksDBOptions

from stream.app import faust_app
from stream.settings import load_settings


def wal_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.log"))


def test_a_worker_app_opens_table_stores_without_a_write_ahead_log(tmp_path: Path) -> None:
    base = load_settings(environ={})
    faust_app(replace(base, worker=replace(base.worker, data_dir=str(tmp_path / "w"))))
    options = RocksDBOptions(use_rocksdict=True)
    path = tmp_path / "journeys-0.db"
    db = options.open(path)
    for i in range(500):
        db.put(f"customer-{i}".encode(), b"x" * 2000)
    assert wal_bytes(path) == 0
    db.close()

    db = options.open(path)
    assert db.get(b"customer-499") == b"x" * 2000
    db.close()
