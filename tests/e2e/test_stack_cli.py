"""Running the pieces by hand: commands started beside ``journey stack`` find all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from stream.dispatch.facts import suppression_entry
from tests.helpers import wait_for


def test_commands_beside_journey_stack_use_its_redis_and_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    stack = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "stack", "--dir", "var/own-stack"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    info_file = tmp_path / "var" / "stack.json"
    try:
        wait_for(info_file.exists, bool, timeout_s=60)
        info = json.loads(info_file.read_text())
        assert info["mail_folder"] == str(tmp_path / "var" / "own-stack" / "mail")
        assert info["api_token"] and info["redis_url"].startswith("redis://127.0.0.1:")
        entry = f"someone-{os.getpid()}@example.com"
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", "suppress", "add", entry],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        # The stack's Redis got it, not whatever listens on the default port.
        stack_redis = redis.Redis.from_url(info["redis_url"])
        members = {m.decode() for m in stack_redis.smembers("journey:dispatch:suppressed")}
        assert suppression_entry(entry) in members, members
        stack_redis.close()
        shown = subprocess.run(
            [sys.executable, "-m", "stream.cli", "config"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        # `journey config` shows the settings file's values; the stack is applied by the
        # commands that connect, so the default broker stays empty here.
        assert json.loads(shown.stdout)["settings"]["broker"]["url"] == ""
    finally:
        stack.send_signal(signal.SIGTERM)
        out, _ = stack.communicate(timeout=30)
    assert stack.returncode == 0, out
    assert "Emails land in" in out
    assert not info_file.exists(), "the stack removes its file when it stops"
