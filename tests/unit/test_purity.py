"""tests/unit holds pure-core tests: importing any of them loads no stream framework,
Kafka client, Redis client or RocksDB (those tests belong in tests/integration)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

SHELL_LIBRARIES = ("faust", "mode", "aiokafka", "kafka", "redis", "rocksdict")

PROBE = """
import importlib, pathlib, sys
loaded = {}
for path in sorted(pathlib.Path("tests/unit").glob("test_*.py")):
    before = set(sys.modules)
    importlib.import_module("tests.unit." + path.stem)
    for name in set(sys.modules) - before:
        top = name.split(".")[0]
        if top in %r:
            loaded.setdefault(path.name, set()).add(top)
print({k: sorted(v) for k, v in sorted(loaded.items())})
"""


def test_unit_tests_import_no_shell_library() -> None:
    # A fresh interpreter: pytest's own process has loaded the integration fixtures.
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (SHELL_LIBRARIES,)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "{}", out.stdout
