"""``journey simulate`` and ``journey replay`` through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from stream import contract
from stream.journey.replay import END, run_oracle
from stream.journey.stages import load_model
from tests.helpers import REPO as ROOT


def journey(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )


def test_replay_prints_transitions_and_final_states(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    journey("simulate", "--customers", "40", "--seed", "3", "--out", str(log))
    with log.open("ab") as fh:
        fh.write(b'{"event_id": "broken"}\n')  # rejected with a reason, not fatal

    result = journey("replay", str(log), "--until", "end")
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert b"rejected: type is required" in result.stderr

    events = [contract.parse(orjson.loads(line)) for line in log.read_bytes().splitlines()[:-1]]
    oracle = run_oracle(events, load_model("five-stage"), 600_000, END)
    transitions = [x for x in lines if x["kind"] == "transition"]
    states = {x["customer_id"]: x for x in lines if x["kind"] == "state"}
    assert len(transitions) == len(oracle.transitions) > 0
    assert {(t["customer_id"], t["to"], t["at"]) for t in transitions} == {
        (t.customer_id, t.to_stage, t.at) for t in oracle.transitions
    }
    assert {k: s["stage"] for k, s in states.items()} == {
        s.key: s.stage for s in oracle.final_states()
    }
