"""The embedded local stack for the demo and the tests (loopback only).

One module per part: :mod:`.broker` (Tansu, Kafka-compatible), :mod:`.redis_server`,
:mod:`.smtp_catcher`, :mod:`.process` (child processes that die with their
parent), :mod:`.stack` (the parts together) and :mod:`.wait` (polling with a
deadline).
"""

from stream.embedded.broker import EmbeddedBroker
from stream.embedded.process import free_port, parent_death_hook
from stream.embedded.redis_server import EmbeddedRedis, redis_server_binary
from stream.embedded.smtp_catcher import CaughtMail, SmtpCatcher
from stream.embedded.stack import EmbeddedStack
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
    "parent_death_hook",
    "redis_server_binary",
    "wait_until",
]
