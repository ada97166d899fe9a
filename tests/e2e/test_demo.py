"""The whole stack through its CLI: ``journey demo`` runs, reports and cleans up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.installed import InstalledPackage

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_stack_and_exits_cleanly(
    installed_embedded: InstalledPackage, tmp_path: Path
) -> None:
    # The installed package, from a folder of its own, as a user runs it.
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            installed_embedded.journey,
            "demo",
            "--duration",
            "45",
            "--rate",
            "15",
            "--workdir",
            str(workdir),
        ],
        cwd=tmp_path,
        env=installed_embedded.environ(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    start = out.index('{\n  "seconds"')
    report = json.loads(out[start : out.index("\n}", start) + 2])
    ingested = report["events_ingested"]
    assert ingested.get("web", 0) > 0, report
    assert ingested.get("pos", 0) > 0, report
    # Web events were accepted by the collector and reached the worker.
    assert report["collector_responses"].get("200", 0) > 0
    # The deliberately malformed calls were answered 400 and dead-lettered.
    assert report["collector_responses"].get("400", 0) > 0
    assert report["transitions"] > 0
    assert report["funnel"]["customers"] > 0
    # The live map's address is printed, and the report names what the map found
    # in the month of journey-map history: the planted moment of truth and pain point.
    assert f"{report['journey_map_url'].split('?')[0]}?token=" in out
    found = report["journey_map"]
    assert found["customers"] > 0, report
    assert any(
        m["stage"] == "consideration" and m["touchpoint"] == "page_view:comparison"
        for m in found["moments_of_truth"]
    ), found
    assert any(
        p["stage"] == "decision" and p["touchpoint"] == "support_contact"
        for p in found["pain_points"]
    ), found
    assert "events in" in out and "stages now" in out and "dispatch" in out
    # Carts were abandoned and the dispatcher mailed follow-ups into the catcher's folder.
    assert sum(report["abandoned"].values()) > 0, report
    assert report["dispatch"].get("sent", 0) > 0, report
    # The closed loop: what the shoppers were planted to do beside what was measured.
    loop = report["followups"]
    assert loop["planted"]["cart"]["uplift"] == 0.3
    assert isinstance(loop["measured"], list), loop
    assert sum(s["decided"] for s in loop["shoppers"].values()) > 0, loop
    emails = list(Path(report["mailbox"]).glob("*.eml"))
    assert len(emails) == report["emails"] >= report["dispatch"]["sent"]
    # Nothing of the demo is left running.
    leftover = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
