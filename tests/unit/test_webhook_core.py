"""The webhook channel's pure parts: signing, retry decisions, backoff, Retry-After,
the circuit breaker, rule channels, endpoints and their secrets at start."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.defaults import ConfigError
from stream.dispatch.webhooks import breaker, retry, signing
from stream.dispatch.webhooks.endpoints import channels_of
from stream.dispatch.webhooks.retry import Attempt, RetryPolicy
from stream.security import insecure_secrets
from stream.settings import Settings, as_dict, load_settings
from stream.triggers.channels import (
    EMAIL_ONLY,
    Route,
    parse_route,
    routes_by_rule,
    unknown_endpoints,
)

SECRET = "whsec-test"
BODY = b'{"id":"t-1","trigger":{"rule":"cart"}}'


# -- signing ------------------------------------------------------------------
def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = signing.signature(SECRET, 1_700_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


@given(st.binary(max_size=500), st.integers(0, 10**10), st.text(min_size=1, max_size=40))
def test_a_signature_verifies_and_any_change_breaks_it(body: bytes, ts: int, secret: str) -> None:
    header = signing.signature(secret, ts, body)
    assert signing.verify(secret, header, body, now=ts)
    assert not signing.verify(secret, header, body + b" ", now=ts)
    assert not signing.verify(secret + "x", header, body, now=ts)
    assert not signing.verify(secret, header.replace(f"t={ts}", f"t={ts + 1}"), body, now=ts)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    header = signing.signature(SECRET, 1000, BODY)
    assert signing.verify(SECRET, header, BODY, now=1000 + 300)
    assert not signing.verify(SECRET, header, BODY, now=1000 + 301)


@pytest.mark.parametrize("header", ["", "t=1", "v1=ab", "t=x,v1=ab", "garbage", "t=1;v1=2"])
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    assert not signing.verify(SECRET, header, BODY, now=1)


# -- what a response means -------------------------------------------------------
@pytest.mark.parametrize(
    ("attempt", "result", "verdict"),
    [
        (Attempt(status=200), retry.OK, retry.DELIVERED),
        (Attempt(status=204), retry.OK, retry.DELIVERED),
        (Attempt(status=500), retry.SERVER_ERROR, retry.RETRY),
        (Attempt(status=503), retry.SERVER_ERROR, retry.RETRY),
        (Attempt(status=429), retry.RATE_LIMITED, retry.RETRY),
        (Attempt(status=400), retry.CLIENT_ERROR, retry.REJECTED),
        (Attempt(status=404), retry.CLIENT_ERROR, retry.REJECTED),
        (Attempt(status=410), retry.CLIENT_ERROR, retry.REJECTED),
        (Attempt(error=retry.TIMEOUT), retry.TIMEOUT, retry.RETRY),
        (Attempt(error=retry.CONNECTION_ERROR), retry.CONNECTION_ERROR, retry.RETRY),
    ],
)
def test_retry_on_timeouts_connection_errors_5xx_and_429_only(
    attempt: Attempt, result: str, verdict: str
) -> None:
    assert attempt.result == result
    assert attempt.verdict == verdict
    assert attempt.endpoint_failed == (verdict == retry.RETRY)


# -- backoff and Retry-After -------------------------------------------------------
POLICY = RetryPolicy(base_s=1.0, cap_s=60.0, retry_after_max_s=120.0)


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [retry.backoff_s(n, POLICY, rand=1.0) for n in range(1, 10)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@given(st.integers(1, 10_000), st.floats(0, 1))
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt: int, rand: float) -> None:
    wait = retry.backoff_s(attempt, POLICY, rand)
    ceiling = min(POLICY.cap_s, POLICY.base_s * 2.0 ** min(attempt - 1, 62))
    assert 0.0 <= wait <= ceiling


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_767_268_800.0
    assert retry.retry_after_s("7", now) == 7.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert retry.retry_after_s(date, now) == pytest.approx(30.0)
    past = format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True)
    assert retry.retry_after_s(past, now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "x" * 100])
def test_unusable_retry_after_values_are_ignored(value: str | None) -> None:
    assert retry.retry_after_s(value, 0.0) is None


def test_retry_after_replaces_the_backoff_and_is_capped() -> None:
    rate_limited = Attempt(status=429, retry_after="5")
    assert retry.delay_s(rate_limited, 1, POLICY, rand=0.9, now=0) == 5.0
    greedy = Attempt(status=503, retry_after="86400")
    assert retry.delay_s(greedy, 1, POLICY, rand=0.9, now=0) == POLICY.retry_after_max_s
    plain = Attempt(status=500)
    assert retry.delay_s(plain, 3, POLICY, rand=0.5, now=0) == 2.0


# -- circuit breaker ---------------------------------------------------------------
def test_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    b = breaker.Breaker(failures=3, cooldown_s=10.0)
    assert b.capacity(0, 4) == 4
    b.failed(1)
    b.failed(2)
    b.succeeded()  # a success resets the count
    b.failed(3)
    b.failed(4)
    assert b.current(4) == breaker.CLOSED
    b.failed(5)
    assert b.current(5) == breaker.OPEN
    assert b.capacity(14.9, 4) == 0
    assert b.reopens_in(10) == pytest.approx(5.0)
    assert b.current(15) == breaker.HALF_OPEN
    assert b.capacity(15, 4) == 1
    b.started(15)
    assert b.capacity(15, 4) == 0  # one probe at a time
    b.failed(16)
    assert b.current(16) == breaker.OPEN  # a failed probe re-opens at once
    assert b.capacity(25.9, 4) == 0
    b.started(26)
    b.succeeded()
    assert b.current(26) == breaker.CLOSED
    assert b.capacity(26, 4) == 4


@given(st.lists(st.booleans(), max_size=60))
def test_breaker_never_lets_more_than_one_probe_through_while_not_closed(
    results: list[bool],
) -> None:
    b = breaker.Breaker(failures=2, cooldown_s=1.0)
    now = 0.0
    for ok in results:
        now += 0.5
        allowed = b.capacity(now, 8)
        assert allowed == (8 if b.current(now) == breaker.CLOSED else min(1, allowed))
        if allowed:
            b.started(now)
            b.succeeded() if ok else b.failed(now)


# -- rule channels -----------------------------------------------------------------
def test_rules_send_email_by_default() -> None:
    assert parse_route({"name": "cart"}, "journey.abandonment[0]") == EMAIL_ONLY


def test_a_rule_on_email_and_webhook() -> None:
    route = parse_route({"channels": ["email", "webhook"], "webhooks": ["crm", "sms"]}, "x")
    assert route == Route(email=True, webhooks=("crm", "sms"))
    assert route.names == ("email", "webhook")
    only = parse_route({"channels": ["webhook"], "webhooks": ["sms"]}, "x")
    assert not only.email


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"channels": []}, "channels must be a non-empty list"),
        ({"channels": ["sms"]}, "channels must be a non-empty list"),
        ({"channels": "email"}, "channels must be a non-empty list"),
        ({"channels": ["email", "email"]}, "a channel twice"),
        ({"channels": ["webhook"]}, "needs webhooks"),
        ({"channels": ["email"], "webhooks": ["crm"]}, "does not include webhook"),
        ({"channels": ["webhook"], "webhooks": "crm"}, "list of endpoint names"),
        ({"channels": ["webhook"], "webhooks": ["crm", "crm"]}, "an endpoint twice"),
    ],
)
def test_invalid_channels_name_the_rule(raw: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=rf"journey\.followups\[2\]: .*{error}"):
        parse_route(raw, "journey.followups[2]")


def test_rules_naming_unknown_endpoints_are_listed() -> None:
    routes = routes_by_rule(
        [{"name": "cart", "channels": ["webhook"], "webhooks": ["crm", "sms"]}],
        [{"name": "welcome"}],
    )
    assert routes["welcome"] == EMAIL_ONLY
    problems = unknown_endpoints(routes, ["crm"])
    assert len(problems) == 1
    assert "'cart'" in problems[0] and "'sms'" in problems[0]


def test_the_playbook_refuses_invalid_channels_naming_the_rule() -> None:
    from stream.triggers.playbook import parse_playbook

    with pytest.raises(ValueError, match=r"journey\.abandonment\[0\]: .*needs webhooks"):
        parse_playbook(
            [{"name": "cart", "start": ["add_to_cart"], "wait_s": 60, "channels": ["webhook"]}],
            [],
            ["decision"],
        )
    with pytest.raises(ValueError, match=r"journey\.followups\[0\]: channels"):
        parse_playbook(
            [], [{"name": "w", "to_stage": "decision", "channels": ["fax"]}], ["decision"]
        )


# -- endpoints and secrets at start ----------------------------------------------------
CRM = {"name": "crm", "url": "https://crm.example.com/hook", "headers": {"X-Tenant": "eu"}}


def webhook_settings(endpoints: list[dict[str, object]], **env: str) -> Settings:
    rules = '[{"name":"cart","start":["add_to_cart"],"wait_s":60,'
    rules += '"channels":["email","webhook"],"webhooks":["crm"]}]'
    environ = {"JOURNEY_WEBHOOKS_ENDPOINTS": orjson.dumps(endpoints).decode()}
    environ["JOURNEY_JOURNEY_ABANDONMENT"] = rules
    return load_settings(environ={**environ, **env})


def test_an_endpoint_takes_its_secret_from_the_environment_and_defaults() -> None:
    s = webhook_settings([CRM], JOURNEY_WEBHOOKS_SECRETS="crm=k3y-from-env")
    routes, endpoints = channels_of(s)
    assert routes["cart"] == Route(email=True, webhooks=("crm",))
    crm = endpoints["crm"]
    assert crm.secret == "k3y-from-env"
    assert (crm.timeout_s, crm.max_attempts, crm.concurrency) == (10.0, 8, 4)
    assert crm.headers == (("X-Tenant", "eu"),)
    assert as_dict(s)["webhooks"]["secrets"] == "***"
    inline = webhook_settings([{**CRM, "secret": "inline-k3y"}])
    assert channels_of(inline)[1]["crm"].secret == "inline-k3y"
    assert "inline-k3y" not in str(as_dict(inline))


def test_an_endpoint_without_a_secret_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=r"webhooks\.endpoints\[0\]: .*'crm' has no signing"):
        channels_of(webhook_settings([CRM]))


def test_a_rule_naming_an_unknown_endpoint_refuses_to_start() -> None:
    sms = {"name": "sms", "url": "http://sms.example.com/", "secret": "k" * 20}
    with pytest.raises(ConfigError, match=r"rule 'cart' names webhook endpoint 'crm'.*sms"):
        channels_of(webhook_settings([sms]))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": "CRM!"}, "name must be"),
        ({"url": "ftp://x/"}, "url must be"),
        ({"url": "https:///nohost"}, "url must be"),
        ({"timeout_s": 0}, "timeout_s must be"),
        ({"timeout_s": 10_000}, "timeout_s must be"),
        ({"max_attempts": True}, "max_attempts must be"),
        ({"concurrency": -1}, "concurrency must be"),
        ({"headers": {"Idempotency-Key": "x"}}, "set by the dispatcher"),
        ({"headers": {"X-A": "a\r\nInjected: 1"}}, "one line"),
        ({"headers": ["x"]}, "headers must be a table"),
        ({"retries": 3}, "unknown key"),
    ],
)
def test_invalid_endpoints_name_the_setting(change: dict[str, object], error: str) -> None:
    s = webhook_settings([{**CRM, "secret": "k" * 20, **change}])
    with pytest.raises(ConfigError, match=rf"webhooks\.endpoints\[0\]: .*{error}"):
        channels_of(s)


def test_placeholder_webhook_secrets_are_refused_outside_the_test_stack() -> None:
    s = webhook_settings([CRM], JOURNEY_WEBHOOKS_SECRETS="crm=change-me")
    problems = [p for p in insecure_secrets(s, "dispatcher") if "WEBHOOKS" in p]
    assert problems == [
        "JOURNEY_WEBHOOKS_SECRETS leaves webhook endpoint(s) crm without a real secret"
    ]
    good = webhook_settings([CRM], JOURNEY_WEBHOOKS_SECRETS="crm=" + "k" * 40)
    assert not [p for p in insecure_secrets(good, "dispatcher") if "WEBHOOKS" in p]


def test_a_webhook_only_rule_needs_no_email_address() -> None:
    from stream.dispatch import outcomes
    from stream.dispatch.policy import CustomerSignals, screen
    from stream.dispatch.quiet_hours import QuietHours
    from tests.builders import NOON, trigger

    no_quiet = QuietHours.parse("00:00", "00:00")
    t = trigger(email=None)
    emailed = screen(t, CustomerSignals(), NOON, no_quiet, "UTC")
    assert emailed is not None and emailed.outcome == outcomes.UNREACHABLE
    assert screen(t, CustomerSignals(), NOON, no_quiet, "UTC", needs_email=False) is None
    unsubscribed = screen(t, CustomerSignals(unsubscribed=True), NOON, no_quiet, "UTC", False)
    assert unsubscribed is not None and unsubscribed.outcome == outcomes.SUPPRESSED_CONSENT


def test_the_body_carries_the_trigger_and_what_the_email_template_gets() -> None:
    from stream.dispatch.render import Renderer
    from stream.dispatch.webhooks.body import personalisation, request_body
    from stream.settings import DispatchSettings
    from tests.builders import trigger

    t = trigger()
    personal = personalisation(t, Renderer(), DispatchSettings(tracking_secret="k" * 32))
    body = orjson.loads(request_body(t, personal, 123))
    assert body["id"] == t.trigger_id and body["decided_at"] == 123
    assert body["trigger"] == orjson.loads(t.dumps())
    p = body["personalisation"]
    assert p["greeting"] == "Hi Ann" and p["cart_value"] == 184.0
    assert [i["sku"] for i in p["items"]] == ["SKU-1", "SKU-2"]
    assert p["cart_url"].startswith("http") and p["unsubscribe_url"].startswith("http")
    assert "open_pixel_url" not in p
