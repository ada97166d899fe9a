"""Links in a follow-up email: shop pages, wrapped in signed click tracking."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

OPEN_PATH = "/e/open/{token}.gif"
CLICK_PATH = "/e/click/{token}"
UNSUBSCRIBE_PATH = "/e/unsubscribe/{token}"


@dataclass(frozen=True, slots=True)
class TrackingLinks:
    """URLs for one email; ``token`` is the signed :mod:`stream.dispatch.tokens` text."""

    tracking_base_url: str
    shop_base_url: str
    token: str

    def _tracking(self, path: str) -> str:
        return self.tracking_base_url.rstrip("/") + path.format(token=self.token)

    def shop(self, path: str = "/") -> str:
        """A plain shop URL (``path`` relative to the shop base)."""
        return self.shop_base_url.rstrip("/") + "/" + path.lstrip("/")

    def click(self, url: str) -> str:
        """``url`` wrapped so the collector records the click, then redirects."""
        return self._tracking(CLICK_PATH) + "?" + urlencode({"u": url})

    def product(self, sku: str) -> str:
        return self.click(self.shop(f"/products/{quote(sku, safe='')}"))

    @property
    def cart(self) -> str:
        return self.click(self.shop("/cart"))

    @property
    def home(self) -> str:
        return self.click(self.shop("/"))

    @property
    def open_pixel(self) -> str:
        return self._tracking(OPEN_PATH)

    @property
    def unsubscribe(self) -> str:
        return self._tracking(UNSUBSCRIBE_PATH)


#: Longest click-redirect target accepted (browsers and proxies cap URLs near 2-8 KB).
MAX_REDIRECT_CHARS = 2048


def same_host(url: str, base_url: str) -> bool:
    """Whether ``url`` is http(s) on the host (and port) of ``base_url``: the only
    targets a click redirect may go to (no open redirect). Control characters and
    whitespace are refused: in a ``Location`` header they would split the response."""
    if len(url) > MAX_REDIRECT_CHARS or any(c <= " " or c == "\x7f" for c in url):
        return False
    try:
        target, base = urlsplit(url), urlsplit(base_url)
    except ValueError:
        return False
    return (
        target.scheme in ("http", "https")
        and bool(target.netloc)
        and (target.netloc.lower() == base.netloc.lower())
    )
