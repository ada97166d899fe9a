"""The journey-map page as HTML text: what each form embeds, and what it refuses."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.web import (
    ECHARTS_URL,
    ECHARTS_VERSION,
    echarts_asset,
    render_html,
    render_live_page,
)
from tests.helpers import REPO
from tests.journey_map_reports import partial_report, realistic_report

WEB = REPO / "stream" / "web"


def embedded(html: str, element_id: str) -> Any:
    """The JSON of the ``<script type="application/json">`` element ``element_id``."""
    match = re.search(
        rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.DOTALL
    )
    assert match, element_id
    return json.loads(match.group(1))


def test_standalone_file_carries_the_report_and_echarts_and_loads_nothing() -> None:
    report = realistic_report()
    html = render_html(report)

    assert embedded(html, "jm-report") == report
    assert embedded(html, "jm-config") == {"mode": "static"}
    assert echarts_asset().body.decode() in html.replace("<\\/script", "</script")
    # Opens from disk with no network: no script, style or image from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script src=" not in html


def test_markup_in_the_report_cannot_end_the_script_element() -> None:
    report = partial_report()
    html = render_html(report)
    data = html.split('id="jm-report">', 1)[1].split("</script>", 1)[0]

    assert "<" not in data and ">" not in data and "&" not in data
    assert embedded(html, "jm-report") == report


def test_non_finite_numbers_become_null() -> None:
    html = render_html({"customers": float("nan"), "stages": [{"visits": float("inf")}]})

    assert embedded(html, "jm-report") == {"customers": None, "stages": [{"visits": None}]}


def test_a_report_must_be_a_dict() -> None:
    with pytest.raises(TypeError):
        render_html([1, 2])  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_object_round_trips_through_the_file(report: dict[str, Any]) -> None:
    html = render_html(report)
    data = html.split('id="jm-report">', 1)[1].split("</script>", 1)[0]

    assert "</" not in data and "\u2028" not in data
    assert json.loads(data) == report


def test_live_page_polls_the_data_url_and_loads_echarts_from_the_worker() -> None:
    html = render_live_page(15, "/journey-map")

    assert embedded(html, "jm-config") == {
        "mode": "live",
        "refresh_s": 15,
        "data_url": "/journey-map",
    }
    assert embedded(html, "jm-report") is None
    assert f'<script src="{ECHARTS_URL}"></script>' in html
    assert echarts_asset().body[:2000].decode() not in html
    # The page's address holds the token: it must not leak as a Referer.
    assert '<meta name="referrer" content="no-referrer">' in html


@pytest.mark.parametrize(
    "data_url",
    ["https://elsewhere.example/journey-map", "//elsewhere.example/x", "journey-map", "/a b", ""],
)
def test_live_page_sends_its_token_only_to_this_site(data_url: str) -> None:
    with pytest.raises(ValueError):
        render_live_page(10, data_url)


@pytest.mark.parametrize("refresh_s", [0, -5, 2.5, True])
def test_live_page_refresh_is_a_whole_number_of_seconds(refresh_s: Any) -> None:
    with pytest.raises(ValueError):
        render_live_page(refresh_s, "/journey-map")


def test_echarts_asset_is_the_vendored_version_at_a_versioned_path() -> None:
    asset = echarts_asset()

    assert asset.path == ECHARTS_URL == f"/static/echarts-{ECHARTS_VERSION}.min.js"
    assert asset.content_type == "text/javascript; charset=utf-8"
    assert "immutable" in asset.cache_control
    assert asset.body == (WEB / "static" / "echarts.min.js").read_bytes()
    assert f'version="{ECHARTS_VERSION}"'.encode() in asset.body
    assert b"Licensed to the Apache Software Foundation" in asset.body[:1000]
    # Safe to inline in a <script> element as it is.
    assert b"</script" not in asset.body.lower() and b"<!--" not in asset.body
    assert ECHARTS_VERSION in (WEB / "static" / "ECHARTS.md").read_text()


def test_every_file_the_page_needs_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["stream.web"]
    files = [
        p.relative_to(WEB).as_posix()
        for p in WEB.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    ]

    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing
    assert "static/echarts.min.js" in files
    assert all(
        Path(WEB, "static", "licenses", d, "LICENSE").exists() for d in ("echarts", "zrender")
    )
