"""API tokens and roles, and the refusal of default secrets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stream.defaults import ConfigError
from stream.security import (
    ADMIN,
    READ,
    AccessError,
    check_tokens,
    insecure_secrets,
    require_secrets,
    required_role,
    role_of,
)
from stream.settings import Settings, load_settings


def test_open_read_and_admin_paths() -> None:
    for path in ("/ready", "/live", "/metrics", "/static/echarts-6.1.0.min.js"):
        assert required_role("GET", path) is None
    for path in ("/funnel", "/funnel/local", "/journey-map", "/map"):
        assert required_role("GET", path) == READ
    for path in ("/customers/c-1/journey", "/", "/table/journeys/", "/anything-new"):
        assert required_role("GET", path) == ADMIN
    # Writes need admin even on an open or read path.
    assert required_role("POST", "/ready") == ADMIN
    assert required_role("POST", "/static/x.js") == ADMIN
    assert required_role("DELETE", "/customers/c-1") == ADMIN


def test_tokens_map_to_roles_and_unknown_ones_to_none() -> None:
    tokens = check_tokens({"r": READ, "a": ADMIN})
    assert role_of("r", tokens) == READ
    assert role_of("a", tokens) == ADMIN
    assert role_of("x", tokens) is None
    assert role_of(None, tokens) is None
    assert role_of("", tokens) is None
    with pytest.raises(AccessError, match="role 'root'"):
        check_tokens({"t": "root"})
    with pytest.raises(AccessError, match="empty token"):
        check_tokens({" ": READ})


def production() -> Settings:
    return replace(
        load_settings(environ={}),
        redis=replace(Settings().redis, url="redis://:s3cret-pw@redis:6379/0"),
    )


def test_packaged_defaults_are_refused_naming_each_variable() -> None:
    s = load_settings(environ={})
    assert insecure_secrets(s, "dispatcher") == [
        "JOURNEY_DISPATCH_TRACKING_SECRET is empty or the packaged default: set a long random key",
        "JOURNEY_REDIS_URL has no password or the default one: "
        "give Redis one (redis://:PASSWORD@host/0)",
    ]
    assert [p.split()[0] for p in insecure_secrets(s, "collector")] == [
        "JOURNEY_COLLECTOR_WRITE_KEYS",
        "JOURNEY_DISPATCH_TRACKING_SECRET",
    ]
    with pytest.raises(ConfigError, match="journey collector refuses"):
        require_secrets(s, "collector")
    # The embedded stack and the tests accept them.
    allowed = load_settings(environ={"JOURNEY_SECURITY_ALLOW_DEFAULT_SECRETS": "true"})
    require_secrets(allowed, "collector")


def test_operator_secrets_pass() -> None:
    s = production()
    s = replace(
        s,
        collector=replace(s.collector, write_keys={"wk-7f3a": "web"}),
        dispatch=replace(s.dispatch, tracking_secret="k" * 40),
        worker=replace(s.worker, api_tokens={"t" * 30: ADMIN}),
    )
    for service in ("worker", "collector", "dispatcher", "suppress", "pos"):
        assert insecure_secrets(s, service) == [], service
    # A worker without tokens serves only health and metrics: closed, not insecure.
    assert insecure_secrets(replace(s, worker=replace(s.worker, api_tokens={})), "worker") == []
    bad = replace(s, worker=replace(s.worker, api_tokens={"change-me": ADMIN}))
    assert insecure_secrets(bad, "worker")[0].startswith("JOURNEY_WORKER_API_TOKENS")
