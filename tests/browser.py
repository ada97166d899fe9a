"""Headless Chromium for page tests: Debian's chromium driven by Playwright, no browser download.

Install the browser with ``scripts/install-system-deps`` (never ``playwright install``).
``python -m tests.browser OUT.png`` renders the realistic journey-map report and saves a
1440 px screenshot; ``python -m tests.browser OUT.png --url URL`` saves one of a live map
page: docs/images/journey-map.png is the live map of ``journey demo`` (the address it prints).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = "/usr/bin/chromium"
#: What this machine needs: no sandbox (root), no GPU, and no traffic of the browser's own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium(width: int = 1440, height: int = 900) -> Iterator[BrowserContext]:
    """A browser context with a fresh profile (user-data-dir), times in UTC, reduced motion."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/install-system-deps")
    profile = tempfile.mkdtemp(prefix="journey-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
                locale="en-GB",
                timezone_id="UTC",
                reduced_motion="reduce",
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_report(out: Path, context: BrowserContext) -> None:
    """Render the realistic report standalone in ``context`` (1440 px wide: :func:`chromium`)
    and save a full-page PNG at ``out``."""
    from stream.web import render_html
    from tests.journey_map_reports import realistic_report

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "journey-map.html"
        html.write_text(render_html(realistic_report()), encoding="utf-8")
        page = context.new_page()
        try:
            page.goto(html.as_uri())
            page.wait_for_selector("main[data-renders='1']")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            page.close()


def screenshot_url(out: Path, context: BrowserContext, url: str) -> None:
    """Open the live map at ``url`` in ``context`` and save a full-page PNG at ``out``
    once it has drawn its data."""
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("main[data-renders='1']", timeout=60_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    finally:
        page.close()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/journey-map.png")
    with chromium() as browser_context:
        if len(sys.argv) > 3 and sys.argv[2] == "--url":
            screenshot_url(target, browser_context, sys.argv[3])
        else:
            screenshot_report(target, browser_context)
