"""The dispatcher's pure parts: tracking tokens, the pre-send screen, signals, rendering."""

from __future__ import annotations

import contextlib
import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.contract import Touchpoint
from stream.dispatch import outcomes, tokens
from stream.dispatch.facts import JourneySignal, signals_of
from stream.dispatch.links import same_host
from stream.dispatch.message import TRIGGER_ID_HEADER, build_message
from stream.dispatch.policy import CustomerSignals, screen
from stream.dispatch.quiet_hours import QuietHours
from stream.dispatch.render import Renderer, RenderError
from stream.triggers.trigger import TRANSITION
from tests.builders import NOON, touchpoint, tracking_links, trigger

SECRET = "s3cret"
NO_QUIET = QuietHours.parse("00:00", "00:00")


# -- tokens -------------------------------------------------------------------
ids = st.text(min_size=1, max_size=40)


@given(tid=ids, rule=ids, key=ids, customer=st.none() | ids)
def test_token_round_trip(tid: str, rule: str, key: str, customer: str | None) -> None:
    token = tokens.TrackingToken(tid, rule, key, customer)
    text = tokens.sign(token, SECRET)
    assert tokens.verify(text, SECRET) == token
    assert all(c.isalnum() or c in "-_." for c in text)


def test_token_rejects_other_secret_and_tampering() -> None:
    text = tokens.sign(tokens.TrackingToken("t", "r", "k", "c"), SECRET)
    with pytest.raises(tokens.InvalidToken, match="signature"):
        tokens.verify(text, "other")
    _body, mac = text.split(".")
    forged = tokens.sign(tokens.TrackingToken("t2", "r", "k", "c"), SECRET).split(".")[0]
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(f"{forged}.{mac}", SECRET)


@given(st.text(max_size=300))
def test_token_verify_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(tokens.InvalidToken):
        tokens.verify(text, SECRET)


def test_click_targets_only_the_shop_host() -> None:
    shop = "https://shop.example.com"
    assert same_host("https://shop.example.com/cart", shop)
    assert same_host("http://SHOP.example.com/p?x=1", shop)
    for bad in (
        "https://evil.com/",
        "javascript:alert(1)",
        "//evil.com",
        "https://shop.example.com.evil.com/",
        "",
        # Header splitting: a Location with CR/LF would add a header of the attacker's.
        "https://shop.example.com/x\r\nSet-Cookie: a=b",
        "https://shop.example.com/x\nLocation: https://evil.com/",
        "https://shop.example.com/x y",
        "https://shop.example.com/" + "a" * 3000,
    ):
        assert not same_host(bad, shop)


# -- screen -------------------------------------------------------------------
def test_screen_order_consent_then_purchase_then_reachability_then_quiet() -> None:
    quiet_now = QuietHours.parse("00:00", "23:59:59")
    everything = CustomerSignals(unsubscribed=True, suppressed=True, purchased_at=NOON)
    t = trigger(email=None)
    assert screen(t, everything, NOON, quiet_now, "UTC").outcome == outcomes.SUPPRESSED_CONSENT
    bought = CustomerSignals(purchased_at=NOON)
    assert screen(t, bought, NOON, quiet_now, "UTC").outcome == outcomes.CANCELLED_PURCHASED
    assert screen(t, CustomerSignals(), NOON, quiet_now, "UTC").outcome == outcomes.UNREACHABLE
    delayed = screen(trigger(), CustomerSignals(), NOON, quiet_now, "UTC")
    assert delayed is not None and delayed.outcome == outcomes.DELAYED_QUIET_HOURS
    assert delayed.release_at is not None and delayed.release_at > NOON
    assert screen(trigger(), CustomerSignals(), NOON, NO_QUIET, "UTC") is None


def test_purchase_cancels_only_abandonments_started_before_it() -> None:
    t = trigger()
    before = CustomerSignals(purchased_at=t.event_at - 1)
    assert screen(t, before, NOON, NO_QUIET, "UTC") is None
    after = CustomerSignals(purchased_at=t.event_at + 1)
    assert screen(t, after, NOON, NO_QUIET, "UTC").outcome == outcomes.CANCELLED_PURCHASED
    welcome = trigger(kind=TRANSITION, template="welcome", rule="welcome")
    assert screen(welcome, after, NOON, NO_QUIET, "UTC") is None


def test_an_erased_journeys_triggers_are_never_sent_but_later_ones_are() -> None:
    t = trigger()
    everything = CustomerSignals(unsubscribed=True, purchased_at=NOON, erased_at=t.event_at)
    assert screen(t, everything, NOON, NO_QUIET, "UTC").outcome == outcomes.ERASED
    # A journey begun after the erase is a new one.
    assert screen(t, CustomerSignals(erased_at=t.event_at - 1), NOON, NO_QUIET, "UTC") is None
    assert outcomes.ERASED in outcomes.FINAL


def test_suppression_entries_are_digests_of_the_normalised_value() -> None:
    from stream.dispatch.facts import suppression_entry

    assert suppression_entry(" Ann@Example.com ") == suppression_entry("ann@example.com")
    assert "ann" not in suppression_entry("ann@example.com")
    assert suppression_entry("c-1") != suppression_entry("c-2")


# -- signals ------------------------------------------------------------------
def test_signals_of_keeps_latest_purchase_and_unsubscribe() -> None:
    groups = [
        (
            "c-1",
            [
                touchpoint("purchase-5", "purchase", 5),
                touchpoint("page_view-9", "page_view", 9),
                touchpoint("pos_purchase-7", "pos_purchase", 7),
            ],
        ),
        (
            "c-2",
            [
                touchpoint("unsubscribe-3", "unsubscribe", 3),
                touchpoint("product_view-4", "product_view", 4),
            ],
        ),
        ("c-3", [touchpoint("add_to_cart-1", "add_to_cart", 1)]),
        ("c-1", [touchpoint("purchase-6", "purchase", 6)]),
    ]
    assert signals_of(groups) == {
        "c-1": JourneySignal(purchased_at=7),
        "c-2": JourneySignal(unsubscribed_at=3),
    }


def test_signals_of_takes_only_the_engines_erase_requests() -> None:
    from stream.journey.linking import erase_request

    forged = Touchpoint(event_id="x", type="erase", channel="web", timestamp=9, anonymous_id="c-2")
    groups = [
        ("c-1", [touchpoint("purchase-5", "purchase", 5), erase_request("c-1", 8)]),
        ("c-2", [forged]),
    ]
    assert signals_of(groups) == {"c-1": JourneySignal(purchased_at=5, erased_at=8)}


# -- rendering ----------------------------------------------------------------
TEMPLATES = ["cart_abandoned", "checkout_abandoned", "browse_abandoned", "welcome", "thank_you"]


links = tracking_links


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_with_and_without_details(template: str) -> None:
    renderer = Renderer()
    full = renderer.render(trigger(template=template), links())
    assert "Ann" in full.text and "Ann" in full.html
    assert "https://t.example.com/e/unsubscribe/TOKEN.MAC" in full.text
    assert "https://t.example.com/e/open/TOKEN.MAC.gif" in full.html
    assert "Lyon Part-Dieu" in full.html and "SKU-9" in full.html
    bare = renderer.render(
        trigger(template=template, first_name=None, items=(), top_products=(), last_store=None),
        links(),
    )
    assert "Hi there" in bare.text and "\n" not in bare.subject


def test_cart_email_lists_items_escaped_with_tracked_links() -> None:
    r = Renderer().render(trigger(), links())
    assert r.subject == "Ann, you left something in your cart"
    assert "Trail &lt;Shoe&gt;" in r.html and "Trail <Shoe>" not in r.html
    assert "Trail <Shoe> x 2 at 89.50 EUR = 179.00 EUR" in r.text
    assert "Cart total: 184.00 EUR" in r.text
    product = "https://t.example.com/e/click/TOKEN.MAC?u=https%3A%2F%2Fshop.example.com%2Fproducts%2FSKU-1"
    assert product in r.text and product.replace("&", "&amp;") in r.html


def test_unknown_template_is_a_render_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError):
        Renderer().render(trigger(template="nope"), links())
    with pytest.raises(RenderError):
        Renderer().render(trigger(template="../etc"), links())
    (tmp_path / "x").mkdir()
    for part in ("subject.txt", "body.txt"):
        (tmp_path / "x" / part).write_text("{{ missing_variable }}")
    (tmp_path / "x" / "body.html").write_text("ok")
    with pytest.raises(RenderError, match="missing_variable"):
        Renderer(tmp_path).render(trigger(template="x"), links())


def test_message_headers() -> None:
    t = trigger()
    rendered = Renderer().render(t, links())
    msg = build_message(t, rendered, links(), "Shop <news@shop.example.com>", NOON)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["To"] == "Ann <ann@example.com>"
    assert parsed["Message-ID"] == "<t-1@shop.example.com>"
    assert parsed[TRIGGER_ID_HEADER] == "t-1"
    assert parsed["List-Unsubscribe"] == "<https://t.example.com/e/unsubscribe/TOKEN.MAC>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    kinds = [p.get_content_type() for p in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]


@given(name=st.text(min_size=1, max_size=80).filter(lambda s: s.strip() == s and s.isprintable()))
def test_message_decodes_to_what_was_rendered_whatever_the_name(name: str) -> None:
    t = trigger(first_name=name)
    rendered = Renderer().render(t, links())
    msg = build_message(t, rendered, links(), "Shop <news@shop.example.com>", NOON)
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"].addresses[0].display_name == name
    assert parsed["To"].addresses[0].addr_spec == "ann@example.com"
    assert parsed["Subject"] == rendered.subject
    plain = parsed.get_body(preferencelist=("plain",)).get_content()
    html = parsed.get_body(preferencelist=("html",)).get_content()
    assert plain.replace("\r\n", "\n") == rendered.text
    assert html.replace("\r\n", "\n") == rendered.html
