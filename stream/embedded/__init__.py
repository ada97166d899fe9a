"""The embedded local stack for the demo and the tests (loopback only)."""

from stream.embedded.stack import (
    CaughtMail,
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedStack,
    SmtpCatcher,
    free_port,
    redis_server_binary,
)
from stream.embedded.wait import wait_until
from stream.topics import create_topics

__all__ = [
    "CaughtMail",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedStack",
    "SmtpCatcher",
    "create_topics",
    "free_port",
    "redis_server_binary",
    "wait_until",
]
