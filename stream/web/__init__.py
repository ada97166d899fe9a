"""Web pages of the engine: the journey map (stream.web.page).

The worker routes them; this package only renders HTML and hands out the static
files it ships (the vendored Apache ECharts in ``static/``).
"""

from stream.web.page import (
    ECHARTS_URL,
    ECHARTS_VERSION,
    StaticAsset,
    echarts_asset,
    render_html,
    render_live_page,
)

__all__ = [
    "ECHARTS_URL",
    "ECHARTS_VERSION",
    "StaticAsset",
    "echarts_asset",
    "render_html",
    "render_live_page",
]
