"""The POS producer against the real embedded broker: what reaches the topic, once."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.producers.pos import cli as pos
from stream.producers.pos.producer import PosProducer, PosReport
from stream.producers.publisher import Publisher, PublishError, Record, partition_of
from stream.settings import Settings
from tests.helpers import REPO as ROOT
from tests.helpers import read_topic, wait_for

HEADER = "store_id,register,receipt_id,timestamp,customer_id,loyalty_id,email,items,total,kind\n"


def csv_row(receipt: str, store: str = "S1", customer: str = "C1", **cells: str) -> str:
    row = {
        "store_id": store,
        "register": "1",
        "receipt_id": receipt,
        "timestamp": "2024-11-04T09:00:00Z",
        "customer_id": customer,
        "loyalty_id": "",
        "email": "",
        "items": "SKU-A:1:9.90;SKU-B:2:1.50",
        "total": "",
        "kind": "sale",
    }
    row.update(cells)
    return ",".join(row.values()) + "\n"


def jsonl_row(receipt: str, store: str = "S9", **fields: Any) -> str:
    row: dict[str, Any] = {
        "store_id": store,
        "register": 4,
        "order_id": receipt,
        "timestamp": 1_730_710_800_000,
        "loyalty_card": f"LC-{receipt}",
        "items": [{"sku": "SKU-C", "name": "Candle", "price": 12.0, "quantity": 1}],
    }
    row.update(fields)
    return orjson.dumps(row).decode() + "\n"


def eid(store: str, receipt: str, kind: str = "sale", register: str = "1") -> str:
    return f"pos:{store}:{register}:{receipt}:{kind}"


@pytest.fixture
def topic(broker: Any, settings: Settings) -> str:
    from stream.embedded import create_topics

    name = settings.topics.touchpoints
    create_topics(broker.bootstrap, {name: settings.topics.partitions})
    return name


@pytest.fixture
def publisher(settings: Settings, topic: str) -> Iterator[Publisher]:
    p = Publisher(settings.broker)
    try:
        yield p
    finally:
        p.close()


def on_topic(broker: Any, topic: str) -> list[dict[str, Any]]:
    return [tp for r in read_topic(broker.bootstrap, topic) for tp in records_of(r.value)]


def records_of(value: bytes) -> list[dict[str, Any]]:
    """The touchpoints of one record: an object, or an array packed per partition."""
    decoded = orjson.loads(value)
    return decoded if isinstance(decoded, list) else [decoded]


def event_ids(broker: Any, topic: str) -> Counter[str]:
    return Counter(tp["event_id"] for tp in on_topic(broker, topic))


def rejects(settings: Settings) -> list[dict[str, Any]]:
    path = Path(settings.pos.rejects)
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def checkpoint(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(Path(settings.pos.checkpoint).read_bytes())
    return data["files"]


class RecordingPublisher:
    """The real publisher, remembering the order of acknowledged event ids."""

    def __init__(self, inner: Publisher, fail_on_call: int | None = None) -> None:
        self.inner = inner
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.sent: list[str] = []

    def send_and_wait(self, records: Iterable[Record]) -> int:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise PublishError("broker did not acknowledge: simulated outage")
        records = list(records)
        n = self.inner.send_and_wait(records)
        self.sent.extend(tp["event_id"] for _, _, value in records for tp in records_of(value))
        return n


def test_good_rows_reach_the_topic_once_and_bad_rows_are_rejected(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "day.csv"
    export.write_text(
        HEADER
        + csv_row("R1")
        + csv_row("R2", customer="", email="Ann@Example.com")
        + csv_row("", store="S1")  # line 4: no receipt
        + csv_row("R3", store="")  # line 5: no store
        + csv_row("R4", timestamp="04/11/2024 09:00")  # line 6: bad timestamp
        + "\n"
        + csv_row("R5", customer="")  # line 8: nobody
        + csv_row("R6", items="SKU-A:1")  # line 9: bad item
        + csv_row("R7", loyalty_id="LC-7", customer="", kind="refund", total="-9.90")
        + "S1,1,R8,2024-11-04T09:00:00Z\n"  # line 11: short row
        + csv_row("R9", store="S2")
    )
    report = PosProducer(settings, publisher, batch_rows=4).run([export])

    assert report == PosReport(read=10, published=4, rejected=6, skipped_already_sent=0, files=1)
    tps = on_topic(broker, topic)
    assert Counter(tp["event_id"] for tp in tps) == {
        eid("S1", "R1"): 1,
        eid("S1", "R2"): 1,
        eid("S1", "R7", "refund"): 1,
        eid("S2", "R9"): 1,
    }
    by_id = {tp["event_id"]: tp for tp in tps}
    assert by_id[eid("S1", "R1")]["type"] == "pos_purchase"
    assert by_id[eid("S1", "R1")]["properties"]["value"] == 12.9
    assert by_id[eid("S1", "R2")]["properties"]["email"] == "ann@example.com"
    assert by_id[eid("S1", "R7", "refund")]["type"] == "return"
    # Packed per destination partition, keyed by the first event's routing key:
    # every sale lands on the partition its routing key hashes to.
    partitions = settings.topics.partitions
    keys = {
        tp["event_id"]: (r.key, r.partition)
        for r in read_topic(broker.bootstrap, topic)
        for tp in records_of(r.value)
    }
    for event_id, routing_key in (
        (eid("S1", "R2"), b"email:ann@example.com"),
        (eid("S1", "R7", "refund"), b"loyalty:LC-7"),
    ):
        key, partition = keys[event_id]
        assert partition == partition_of(routing_key, partitions)
        assert partition_of(key, partitions) == partition

    got = rejects(settings)
    assert [(r["file"], r["line"]) for r in got] == [(str(export), n) for n in (4, 5, 6, 8, 9, 11)]
    reasons = [r["reason"] for r in got]
    assert reasons[0] == "receipt_id (or order_id) is required"
    assert reasons[1] == "store_id is required"
    assert reasons[2] == "timestamp '04/11/2024 09:00' is not RFC 3339"
    assert reasons[3].startswith("no customer identifier")
    assert reasons[4] == "items[0] 'SKU-A:1' is not SKU:QTY:PRICE[:NAME]"
    assert reasons[5] == "row has 4 fields, the header has 10"
    assert got[5]["raw"] == "S1,1,R8,2024-11-04T09:00:00Z"

    again = PosProducer(settings, publisher).run([export])
    assert again == PosReport(read=0, published=0, rejected=0, skipped_already_sent=10, files=1)
    assert sum(event_ids(broker, topic).values()) == 4
    assert len(rejects(settings)) == 6


def test_restart_mid_file_sends_every_row_exactly_once(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "big.csv"
    rows = [csv_row(f"R{i}", customer=f"C{i % 5}") for i in range(40)]
    rows[13] = csv_row("R13", timestamp="never")
    export.write_text(HEADER + "".join(rows))

    first = PosProducer(settings, publisher, batch_rows=6).run([export], max_rows=17)
    assert first.read == 17
    assert sum(event_ids(broker, topic).values()) == 16  # R13 rejected
    assert checkpoint(settings)[str(export)]["line"] == 18

    second = PosProducer(settings, publisher, batch_rows=6).run([export])
    assert second.skipped_already_sent == 17
    assert second.read == 23
    ids = event_ids(broker, topic)
    assert set(ids) == {eid("S1", f"R{i}") for i in range(40) if i != 13}
    assert set(ids.values()) == {1}
    assert [r["line"] for r in rejects(settings)] == [15]


def test_rows_of_a_batch_the_broker_did_not_acknowledge_are_sent_after_restart(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "day.csv"
    export.write_text(HEADER + "".join(csv_row(f"R{i}") for i in range(10)))
    flaky = RecordingPublisher(publisher, fail_on_call=2)
    producer = PosProducer(settings, flaky, batch_rows=4)
    with pytest.raises(PublishError):
        producer.run([export])
    assert producer.report.published == 4
    assert checkpoint(settings)[str(export)]["rows"] == 4
    assert set(event_ids(broker, topic)) == {eid("S1", f"R{i}") for i in range(4)}

    PosProducer(settings, publisher, batch_rows=4).run([export])
    ids = event_ids(broker, topic)
    assert set(ids) == {eid("S1", f"R{i}") for i in range(10)}
    assert set(ids.values()) == {1}


def test_json_lines_export(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "feed.jsonl"
    export.write_text(
        jsonl_row("J1")
        + "\n"
        + jsonl_row("J2", kind="refund")
        + '{"store_id": "S9", "register": \n'
        + jsonl_row("J3", items=[{"sku": "X", "price": "free", "quantity": 1}])
        + jsonl_row("J4", email="Bo@Example.com", total=30)
    )
    report = PosProducer(settings, publisher).run([export])
    assert (report.read, report.published, report.rejected) == (5, 3, 2)
    tps = {tp["event_id"]: tp for tp in on_topic(broker, topic)}
    assert set(tps) == {
        eid("S9", "J1", register="4"),
        eid("S9", "J2", "refund", "4"),
        eid("S9", "J4", register="4"),
    }
    j4 = tps[eid("S9", "J4", register="4")]["properties"]
    assert (j4["value"], j4["loyalty_id"], j4["email"]) == (30, "LC-J4", "bo@example.com")
    got = rejects(settings)
    assert [r["line"] for r in got] == [4, 5]
    assert got[0]["reason"].startswith("not valid JSON")
    assert got[1]["reason"] == "items[0] (X) price 'free' is not a number"


def test_folder_of_exports_in_name_order(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "2024-11-05.jsonl").write_text(jsonl_row("N1") + jsonl_row("N2"))
    (folder / "2024-11-04.csv").write_text(HEADER + csv_row("O1") + csv_row("O2"))
    (folder / "notes.txt").write_text("not an export\n")
    (folder / "old").mkdir()
    (folder / "old" / "x.csv").write_text(HEADER + csv_row("SUB"))
    recording = RecordingPublisher(publisher)

    report = PosProducer(settings, recording).run([folder])

    assert (report.files, report.published, report.rejected) == (2, 4, 0)
    assert recording.sent == [
        eid("S1", "O1"),
        eid("S1", "O2"),
        eid("S9", "N1", register="4"),
        eid("S9", "N2", register="4"),
    ]
    assert Counter(event_ids(broker, topic)) == Counter(recording.sent)
    assert set(checkpoint(settings)) == {
        str(folder / "2024-11-04.csv"),
        str(folder / "2024-11-05.jsonl"),
    }
    again = PosProducer(settings, publisher).run([folder])
    assert (again.published, again.skipped_already_sent) == (0, 4)


def test_a_replaced_file_is_read_from_its_start(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "today.csv"
    export.write_text(HEADER + csv_row("A1") + csv_row("A2"))
    PosProducer(settings, publisher).run([export])
    # Tomorrow's export under the same name: same header, longer, new rows.
    fresh = tmp_path / "today.csv.new"
    fresh.write_text(HEADER + csv_row("B1") + csv_row("B2") + csv_row("B3"))
    os.replace(fresh, export)

    report = PosProducer(settings, publisher).run([export])

    assert (report.skipped_already_sent, report.published) == (0, 3)
    assert set(event_ids(broker, topic)) == {eid("S1", x) for x in ("A1", "A2", "B1", "B2", "B3")}


def test_follow_publishes_lines_appended_while_running(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "live.csv"
    export.write_text(HEADER + csv_row("L1") + csv_row("L2"))
    producer = PosProducer(settings, publisher, poll_interval_s=0.05)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            producer.run([export], follow=True, stop_event=stop)
        except BaseException as exc:
            errors.append(exc)

    def append(text: str) -> None:
        with export.open("a") as fh:
            fh.write(text)

    worker = threading.Thread(target=run, name="pos-follow-test")
    worker.start()
    try:
        wait_for(lambda: event_ids(broker, topic), lambda ids: len(ids) == 2)
        append(csv_row("L3") + csv_row("L4", store="") + csv_row("L5")[:20])
        wait_for(
            lambda: (producer.report.read, producer.report.published, producer.report.rejected),
            lambda counts: counts == (4, 3, 1),
        )
        # The half-written L5 came in the same write as L3 and L4 and was not taken.
        assert set(event_ids(broker, topic)) == {eid("S1", f"L{i}") for i in (1, 2, 3)}
        assert [r["line"] for r in rejects(settings)] == [5]
        append(csv_row("L5")[20:])
        wait_for(lambda: event_ids(broker, topic), lambda ids: len(ids) == 4)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert errors == []
    ids = event_ids(broker, topic)
    assert set(ids) == {eid("S1", f"L{i}") for i in (1, 2, 3, 5)}
    assert set(ids.values()) == {1}
    assert checkpoint(settings)[str(export)]["offset"] == export.stat().st_size
    assert producer.report.skipped_already_sent == 0


def test_main_prints_a_one_line_report(
    broker: Any, settings: Settings, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="journey pos")
    pos.add_arguments(parser)
    assert "resumable:" in parser.format_help()
    sample = ROOT / "config" / "pos-sample.csv"
    args = parser.parse_args(
        [
            str(sample),
            "--checkpoint",
            str(tmp_path / "cp.json"),
            "--rejects",
            str(tmp_path / "r.jsonl"),
        ]
    )

    assert pos.main(args, settings) == 0

    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert orjson.loads(out[0]) == {
        "read": 20,
        "published": 20,
        "rejected": 0,
        "skipped_already_sent": 0,
        "files": 1,
    }
    assert str(sample) in orjson.loads((tmp_path / "cp.json").read_bytes())["files"]
    assert len(event_ids(broker, topic)) == 20


def test_sigterm_finishes_the_batch_checkpoints_and_exits_zero(
    broker: Any, settings: Settings, topic: str, tmp_path: Path
) -> None:
    export = tmp_path / "live.jsonl"
    export.write_text(jsonl_row("T1") + jsonl_row("T2"))
    script = (
        "import argparse, sys\n"
        "from stream.producers.pos import cli as pos\n"
        "from stream.settings import load_settings\n"
        "p = argparse.ArgumentParser(); pos.add_arguments(p)\n"
        "sys.exit(pos.main(p.parse_args(sys.argv[1:]), load_settings()))\n"
    )
    env = {
        **os.environ,
        "JOURNEY_BROKER_URL": settings.broker.url,
        "JOURNEY_TOPICS_TOUCHPOINTS": topic,
        "JOURNEY_POS_CHECKPOINT": settings.pos.checkpoint,
        "JOURNEY_POS_REJECTS": settings.pos.rejects,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(export), "--follow"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: event_ids(broker, topic), lambda ids: len(ids) == 2)
        wait_for(lambda: Path(settings.pos.checkpoint).exists(), bool)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out.decode().strip())
    assert (report["read"], report["published"]) == (2, 2)
    assert checkpoint(settings)[str(export)]["offset"] == export.stat().st_size


def test_follow_reads_a_file_rewritten_in_place_from_its_start(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    export = tmp_path / "till.csv"
    export.write_text(HEADER + "".join(csv_row(f"R{i}") for i in range(4)))
    producer = PosProducer(settings, publisher, poll_interval_s=0.05)
    stop = threading.Event()
    worker = threading.Thread(
        target=lambda: producer.run([export], follow=True, stop_event=stop), name="pos-rewrite"
    )
    worker.start()
    try:
        wait_for(lambda: event_ids(broker, topic), lambda ids: len(ids) == 4)
        inode = export.stat().st_ino
        # The till rewrites its export in place: same file, new rows, longer than before.
        with export.open("r+") as fh:
            fh.truncate(0)
            fh.write(HEADER + "".join(csv_row(f"N{i}") for i in range(12)))
        assert export.stat().st_ino == inode
        wait_for(lambda: event_ids(broker, topic), lambda ids: len(ids) == 16)
    finally:
        stop.set()
        worker.join(timeout=30)
    ids = event_ids(broker, topic)
    assert set(ids) == {eid("S1", f"R{i}") for i in range(4)} | {
        eid("S1", f"N{i}") for i in range(12)
    }
    assert rejects(settings) == [], "no half rows from a stale offset"


def test_semicolon_and_tab_exports_are_read_by_their_header(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    import csv
    import io

    def export(name: str, delimiter: str, receipt: str) -> Path:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        writer.writerow(HEADER.strip().split(","))
        writer.writerow(csv_row(receipt).strip().split(","))
        path = tmp_path / name
        path.write_text(out.getvalue())
        return path

    semicolons = export("paris.csv", ";", "P1")
    assert '"SKU-A:1:9.90;SKU-B:2:1.50"' in semicolons.read_text()  # quoted, as tills do
    tabs = export("oslo.csv", "\t", "O1")
    report = PosProducer(settings, publisher).run([semicolons, tabs])
    assert (report.published, report.rejected) == (2, 0), rejects(settings)
    assert set(event_ids(broker, topic)) == {eid("S1", "P1"), eid("S1", "O1")}


def test_a_huge_line_is_streamed_past_with_bounded_memory_and_a_bounded_reject(
    broker: Any, settings: Settings, topic: str, publisher: Publisher, tmp_path: Path
) -> None:
    import hashlib
    import tracemalloc

    export = tmp_path / "broken.csv"
    huge = ("x" * (40 * 1024 * 1024)) + "\n"
    export.write_text(HEADER + csv_row("G1") + huge + csv_row("G2"))
    tracemalloc.start()
    try:
        report = PosProducer(settings, publisher).run([export])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.published, report.rejected) == (2, 1)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while reading a 40 MB line"
    (entry,) = rejects(settings)
    assert entry["line"] == 3 and "longer than" in entry["reason"]
    assert int(entry["original_bytes"]) == len(huge) - 1  # the line, not its newline
    assert entry["original_sha256"] == hashlib.sha256(huge[:-1].encode()).hexdigest()
    assert len(entry["raw"]) <= settings.limits.dead_letter_bytes
    assert set(event_ids(broker, topic)) == {eid("S1", "G1"), eid("S1", "G2")}
