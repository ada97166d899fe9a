"""Rendering follow-ups from Jinja2 templates.

Each template name (a trigger's ``template``) is a folder with ``subject.txt``,
``body.txt`` and ``body.html``, taken from the user's ``dispatch.templates_dir``
when it has that file, else from the packaged ``stream/defaults/templates``.
HTML is autoescaped; subject and text are not (they are not HTML). A missing
variable is an error, not an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from stream.defaults import existing_dir
from stream.dispatch.links import TrackingLinks
from stream.triggers.trigger import Trigger


class RenderError(RuntimeError):
    """A template is missing or failed to render (not worth retrying)."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def money(amount: float, currency: str = "") -> str:
    """``12.5, "EUR"`` -> ``"12.50 EUR"``."""
    return f"{amount:,.2f} {currency}".strip()


class Renderer:
    """Renders a trigger with its links; templates from ``directory``, then the package.

    ``directory`` (None: the packaged templates only) must exist
    (:class:`stream.defaults.ConfigError` otherwise).
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        user = existing_dir(str(directory or ""), "dispatch.templates_dir")
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("stream", "defaults/templates")]
        if user is not None:
            loaders.insert(0, jinja2.FileSystemLoader(str(user)))
        self.directory = f"{user} or the packaged templates" if user else "the packaged templates"
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        self.env.filters["money"] = money

    def context(self, trigger: Trigger, links: TrackingLinks) -> dict[str, Any]:
        """The variables a template sees."""
        currency = trigger.currency
        items = [
            {
                "sku": i.sku,
                "name": i.name or i.sku,
                "quantity": i.quantity,
                "price": i.price,
                "currency": currency,
                "value": round(i.price * i.quantity, 2),
                "url": links.product(i.sku),
            }
            for i in trigger.items
        ]
        return {
            "trigger": trigger,
            "first_name": trigger.first_name,
            "greeting": f"Hi {trigger.first_name}" if trigger.first_name else "Hi there",
            "items": items,
            "cart_value": trigger.value or sum(i["value"] for i in items),
            "currency": currency,
            "top_products": [{"sku": s, "url": links.product(s)} for s in trigger.top_products],
            "last_store": trigger.last_store,
            "cart_url": links.cart,
            "shop_url": links.home,
            "unsubscribe_url": links.unsubscribe,
            "open_pixel_url": links.open_pixel,
        }

    def render(self, trigger: Trigger, links: TrackingLinks) -> RenderedEmail:
        """Subject (one line), text and HTML bodies; :class:`RenderError` on any failure."""
        name = trigger.template
        if not name or "/" in name or name.startswith((".", "_")):
            raise RenderError(f"invalid template name {name!r}")
        ctx = self.context(trigger, links)
        try:
            subject = self.env.get_template(f"{name}/subject.txt").render(ctx)
            text = self.env.get_template(f"{name}/body.txt").render(ctx)
            html = self.env.get_template(f"{name}/body.html").render(ctx)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"no template {exc.name!r} in {self.directory}") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"template {name!r} failed: {exc}") from None
        return RenderedEmail(" ".join(subject.split()), text, html)
