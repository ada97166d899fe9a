"""The shipped Grafana dashboards are valid, provisioned and readable by a marketer."""

from __future__ import annotations

import re

import pytest

from tests.dashboards import (
    DASHBOARDS,
    GRAFANA,
    dashboard_files,
    load,
    panel_queries,
    panels,
    provisioned_datasource_uid,
    scrape_jobs,
)

PANEL_TYPES = {"timeseries", "stat", "bargauge", "gauge", "table", "piechart", "barchart", "text"}
EXPECTED_TITLES = {"Customer journey", "Pipeline health", "Journey map"}


def test_dashboards_exist_with_unique_uids() -> None:
    boards = [load(p) for p in dashboard_files()]
    assert {b["title"] for b in boards} >= EXPECTED_TITLES
    uids = [b["uid"] for b in boards]
    assert len(uids) == len(set(uids))
    for board in boards:
        assert re.fullmatch(r"[\w-]{1,40}", board["uid"])
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 30
        assert board["panels"], board["title"]
        assert board.get("description")


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_panels_are_complete_and_use_the_provisioned_datasource(path) -> None:  # type: ignore[no-untyped-def]
    board = load(path)
    uid = provisioned_datasource_uid()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        where = f"{board['title']} / {panel.get('title')}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"].strip(), where
        assert len(panel.get("description", "")) >= 20, f"{where}: needs a description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: needs a unit"
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        assert panel["targets"], f"{where}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, where
            assert target["expr"].strip(), where


def test_queries_use_only_emitted_metric_names() -> None:
    """Every ``journey_*`` name a panel queries is defined in stream.observability.metrics."""
    from prometheus_client import REGISTRY

    import stream.observability.metrics  # noqa: F401  (registers the metrics)

    known = {
        sample_name
        for collector in list(REGISTRY._collector_to_names)  # type: ignore[attr-defined]
        for sample_name in REGISTRY._collector_to_names[collector]  # type: ignore[attr-defined]
    }
    for query in panel_queries():
        for name in re.findall(r"\b(journey_\w+)", query.expr):
            assert name in known, f"{query}: {name} is not a metric of this engine"


def test_provisioning_points_at_the_dashboards_and_prometheus_scrapes_every_service() -> None:
    provider = (GRAFANA / "provisioning" / "dashboards" / "journey.yml").read_text()
    path = re.search(r"path:\s*(\S+)", provider)
    assert path is not None
    compose = (DASHBOARDS.parents[2] / "docker-compose.yml").read_text()
    # The compose file mounts config/grafana/dashboards where the provider looks.
    assert f"./config/grafana/dashboards:{path.group(1)}" in compose
    assert set(scrape_jobs()) >= {"worker", "collector", "dispatcher", "pos"}
