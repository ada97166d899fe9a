"""``journey report`` on ``journey simulate --map`` output finds what the simulator planted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import REPO as ROOT

DAY = 86_400


def journey(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=True,
    )


def test_report_finds_the_planted_helper_hurter_and_incident(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    journey(
        "simulate",
        "--map",
        "--customers",
        "8000",
        "--seed",
        "11",
        "--span-s",
        str(24 * DAY),
        "--incident-day",
        "18",
        "--out",
        str(log),
    )
    rep = orjson.loads(journey("report", str(log)).stdout)

    verdicts = {
        (t["stage"], t["touchpoint"]): t["verdict"]
        for t in rep["touchpoints"]
        if t["channel"] is None
    }
    planted = {
        ("consideration", "page_view:comparison"): "moment_of_truth",
        ("decision", "support_contact"): "pain_point",
        ("decision", "payment_error"): "pain_point",  # the incident's failed checkouts
    }
    assert {k: verdicts.get(k) for k in planted} == planted
    rest = {k: v for k, v in verdicts.items() if k not in planted}
    assert rest and set(rest.values()) <= {"neutral", "insufficient"}, rest
    # Online and offline touchpoints side by side: the support contact by its channel.
    [support] = [
        t
        for t in rep["touchpoints"]
        if t["touchpoint"] == "support_contact" and t["channel"] == "support"
    ]
    assert support["online"] is False and support["lift"] < 1

    # The incident starts on 2026-01-19 (day 18): both alerts open when that day ends.
    alerts = {(a["kind"], a["stage"], a["touchpoint"]): a for a in rep["alerts"]}
    assert set(alerts) == {
        ("stage_advance_drop", "decision", None),
        ("touchpoint_spike", "decision", "payment_error"),
    }
    for a in alerts.values():
        assert a["opened_at"] == "2026-01-20T00:00:00.000Z"
        assert a["closed_at"] is not None and a["closed_at"] <= "2026-01-23T00:00:00.000Z"
    drop = alerts["stage_advance_drop", "decision", None]
    assert drop["rate"] < drop["baseline_rate"] and drop["p_value"] < 0.001

    # The cut by platform shows who it hit: ios checkouts stopped entirely.
    ios = orjson.loads(journey("report", str(log), "--segment", "context.platform:ios").stdout)
    [ios_drop] = [a for a in ios["alerts"] if a["kind"] == "stage_advance_drop"]
    assert ios_drop["rate"] == 0.0 and ios_drop["segment"] == "context.platform:ios"
    android = orjson.loads(
        journey("report", str(log), "--segment", "context.platform:android").stdout
    )
    assert android["alerts"] == []
    assert {v["value"] for v in rep["segments"]["values"]} == {"ios", "android", "desktop"}

    stages = {s["stage"]: s for s in rep["stages"]}
    assert stages["awareness"]["visits"] == rep["customers"] == 8000
    assert all(s["open"] == 0 for s in rep["stages"])  # an old log: every visit has ended
    assert stages["decision"]["median_time_to_advance_s"] > 0

    # Two runs of the same log give the same report; a window cuts it.
    assert orjson.loads(journey("report", str(log)).stdout) == rep
    week = orjson.loads(
        journey(
            "report", str(log), "--since", "2026-01-08T00:00:00Z", "--until", "2026-01-15T00:00:00Z"
        ).stdout
    )
    assert week["window"]["since"] == "2026-01-08T00:00:00.000Z"
    assert week["window"]["until"] == "2026-01-15T00:00:00.000Z"
    assert week["alerts"] == []
