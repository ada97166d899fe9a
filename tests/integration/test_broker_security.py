"""Kafka security settings reach the Faust apps (worker, dispatcher) as credentials."""

from __future__ import annotations

import ssl

import faust

from stream.app import broker_credentials, broker_ssl_context
from stream.settings import BrokerSettings


def test_plaintext_has_no_credentials() -> None:
    assert broker_credentials(BrokerSettings()) is None
    assert broker_ssl_context(BrokerSettings(security_protocol="SASL_PLAINTEXT")) is None


def test_tls_without_sasl() -> None:
    creds = broker_credentials(BrokerSettings(security_protocol="SSL"))
    assert isinstance(creds, faust.SSLCredentials)
    assert isinstance(creds.context, ssl.SSLContext)


def test_sasl_over_tls_and_plaintext() -> None:
    over_tls = broker_credentials(
        BrokerSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="journey",
            sasl_password="secret",
        )
    )
    assert isinstance(over_tls, faust.SASLCredentials)
    assert (over_tls.username, over_tls.mechanism.value) == ("journey", "SCRAM-SHA-512")
    assert isinstance(over_tls.ssl_context, ssl.SSLContext)
    plain = broker_credentials(
        BrokerSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    )
    assert isinstance(plain, faust.SASLCredentials) and plain.ssl_context is None
