"""The journey-map page: one HTML template, served live by a worker or saved as a file.

Both forms run the same script over a report (the ``/journey-map`` JSON object:
stages, flows, touchpoints, alerts, follow-ups):

- :func:`render_live_page` is the page a worker serves at ``GET /map``. The
  browser fetches ``data_url`` every ``refresh_s`` seconds with the page's own
  query string, sending the page's ``?token=`` only as ``Authorization: Bearer``,
  and redraws in place. ECharts comes from the worker at :data:`ECHARTS_URL`
  (:func:`echarts_asset` gives the bytes to serve there).
- :func:`render_html` is a standalone file with ECharts and the report inline,
  for ``journey report --format html``; it opens from disk with no network.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: The vendored Apache ECharts (stream/web/static/ECHARTS.md says how to update it).
ECHARTS_VERSION = "6.1.0"
#: Where the live page loads ECharts from; the version in the path lets it be cached for good.
ECHARTS_URL = f"/static/echarts-{ECHARTS_VERSION}.min.js"

_TEMPLATE = "journey_map.html"
_SLOT = re.compile(r"<!--@(config|report|echarts)@-->")
# Characters that would let JSON text end a <script> element or an HTML comment early,
# and the two that old JavaScript parsers reject inside strings.
_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


@dataclass(frozen=True)
class StaticAsset:
    """A file the worker serves as is: its URL path, body and response headers."""

    path: str
    body: bytes
    content_type: str
    cache_control: str


def echarts_asset() -> StaticAsset:
    """The vendored ECharts script, to serve at ``asset.path`` (:data:`ECHARTS_URL`)."""
    return StaticAsset(
        path=ECHARTS_URL,
        body=_echarts_bytes(),
        content_type="text/javascript; charset=utf-8",
        # The version is in the path: a new version is a new URL.
        cache_control="public, max-age=31536000, immutable",
    )


def render_live_page(
    refresh_s: int,
    data_url: str,
    *,
    echarts_url: str = ECHARTS_URL,
    followups_url: str | None = None,
) -> str:
    """The live map page (HTML) that polls ``data_url`` every ``refresh_s`` seconds.

    With ``followups_url`` (``/followups``) it polls that too and shows the
    follow-ups panel from its ``followups``, for the same since/until.

    ``data_url`` must be a path on the same site (``/journey-map``): the page
    sends its bearer token there, so another origin is refused (ValueError).
    The page itself holds no data and no secret.
    """
    if isinstance(refresh_s, bool) or not isinstance(refresh_s, int) or refresh_s < 1:
        raise ValueError(f"refresh_s must be a whole number of seconds >= 1, not {refresh_s!r}")
    _require_same_site_path("data_url", data_url)
    _require_same_site_path("echarts_url", echarts_url)
    config: dict[str, Any] = {"mode": "live", "refresh_s": refresh_s, "data_url": data_url}
    if followups_url is not None:
        _require_same_site_path("followups_url", followups_url)
        config["followups_url"] = followups_url
    script = f'<script src="{_attr(echarts_url)}"></script>'
    return _fill(config=_json_for_script(config), report="null", echarts=script)


def render_html(report: dict[str, Any]) -> str:
    """A standalone HTML file drawing ``report``, with ECharts and the data inline.

    Non-finite numbers (NaN, infinities) are written as null, which the page shows
    as "no value". Raises TypeError when ``report`` is not a dict or holds values
    JSON cannot represent.
    """
    if not isinstance(report, dict):
        raise TypeError(f"report must be a dict, not {type(report).__name__}")
    script = "<script>" + _inline_script(_echarts_bytes().decode("utf-8")) + "</script>"
    return _fill(
        config=_json_for_script({"mode": "static"}),
        report=_json_for_script(_finite(report)),
        echarts=script,
    )


def _fill(**slots: str) -> str:
    # One pass: text put in a slot is never searched for further slots.
    return _SLOT.sub(lambda m: slots[m.group(1)], _template())


def _json_for_script(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (read back with JSON.parse)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in _JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def _inline_script(source: str) -> str:
    # "</script" would end the inline script early; inside JavaScript strings and regular
    # expressions "<\/" means the same. (The vendored file has none, nor "<!--": its test checks.)
    return re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _require_same_site_path(name: str, url: str) -> None:
    if not isinstance(url, str) or not url.startswith("/") or url.startswith("//") or "\\" in url:
        raise ValueError(f"{name} must be a path on this site starting with '/', not {url!r}")
    if any(c in url for c in "\"'<> \t\r\n"):
        raise ValueError(f"{name} holds characters a URL path cannot: {url!r}")


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;")


@cache
def _template() -> str:
    return resources.files("stream.web").joinpath("templates", _TEMPLATE).read_text("utf-8")


@cache
def _echarts_bytes() -> bytes:
    return resources.files("stream.web").joinpath("static", "echarts.min.js").read_bytes()
