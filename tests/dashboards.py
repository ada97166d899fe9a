"""The shipped Grafana dashboards and Prometheus config, read as Grafana and the tests need."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import REPO

GRAFANA = REPO / "config" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources"
PROMETHEUS_CONFIG = REPO / "config" / "prometheus" / "prometheus.yml"

#: Grafana's built-in range variables, replaced by a window covering a whole test run.
GRAFANA_RANGE_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
#: The dashboards' own variables, replaced by their "All" value.
DASHBOARD_VARIABLES = {"$rule": ".+"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return dict(orjson.loads(path.read_bytes()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows (rows themselves excluded)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    out = []
    for path in dashboard_files():
        board = load(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                out.append(
                    PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
                )
    return out


def promql(expr: str, window: str) -> str:
    """``expr`` with Grafana's range variables replaced by ``window`` (e.g. ``10m``) and
    the dashboards' variables by their "All" value."""
    for name in GRAFANA_RANGE_VARIABLES:
        expr = expr.replace(name, window)
    for name, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def provisioned_datasource_uid() -> str:
    """The uid of the provisioned Prometheus datasource (the one dashboards must name)."""
    uids = []
    for path in DATASOURCES.glob("*.y*ml"):
        uids += re.findall(r"^\s*uid:\s*['\"]?([\w-]+)", path.read_text(), flags=re.M)
    assert len(uids) == 1, f"expected one provisioned datasource uid, found {uids}"
    return uids[0]


def scrape_jobs() -> list[str]:
    """Job names of the production scrape config."""
    return re.findall(r"^\s*-\s*job_name:\s*['\"]?([\w-]+)", PROMETHEUS_CONFIG.read_text(), re.M)
