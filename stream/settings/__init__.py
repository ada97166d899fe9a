"""One settings object for every service, built once from TOML and the environment.

Precedence (lowest first): the defaults of the section classes (also written
out, with comments, in the packaged ``stream/defaults/journey.toml``), the
settings file named by ``JOURNEY_CONFIG`` (or ``journey --config``), then
``JOURNEY_<SECTION>_<FIELD>`` environment variables (``JOURNEY_BROKER_URL``,
``JOURNEY_REDIS_URL``, ``JOURNEY_COLLECTOR_PORT``, ``JOURNEY_TOPICS_PARTITIONS``
...). Relative paths are relative to the working directory. Nothing else in the
package reads ``os.environ``; the settings object is passed down.

The sections live by what they configure: :mod:`~stream.settings.connections`
(broker, topics, Redis, SMTP), :mod:`~stream.settings.producers` (collector,
input limits, POS), :mod:`~stream.settings.journey` (worker, journey rules,
journey map), :mod:`~stream.settings.dispatch`; :mod:`~stream.settings.model`
puts them together and :mod:`~stream.settings.loading` builds and writes them.
"""

from stream.settings.connections import (
    BrokerSettings,
    RedisSettings,
    SmtpSettings,
    TopicSettings,
)
from stream.settings.dispatch import DispatchSettings, WebhookSettings
from stream.settings.journey import (
    DEFAULT_ABANDONMENT,
    DEFAULT_FOLLOWUPS,
    AnalyticsSettings,
    AttributionSettings,
    JourneySettings,
    WorkerSettings,
)
from stream.settings.loading import (
    ENV_PREFIX,
    as_dict,
    files_in_use,
    load_settings,
    mask_url,
    redis_password,
    templates_in_use,
    to_environ,
    with_environ,
)
from stream.settings.model import SECTIONS, SecuritySettings, Settings
from stream.settings.producers import CollectorSettings, LimitsSettings, PosSettings

__all__ = [
    "DEFAULT_ABANDONMENT",
    "DEFAULT_FOLLOWUPS",
    "ENV_PREFIX",
    "SECTIONS",
    "AnalyticsSettings",
    "AttributionSettings",
    "BrokerSettings",
    "CollectorSettings",
    "DispatchSettings",
    "JourneySettings",
    "LimitsSettings",
    "PosSettings",
    "RedisSettings",
    "SecuritySettings",
    "Settings",
    "SmtpSettings",
    "TopicSettings",
    "WebhookSettings",
    "WorkerSettings",
    "as_dict",
    "files_in_use",
    "load_settings",
    "mask_url",
    "redis_password",
    "templates_in_use",
    "to_environ",
    "with_environ",
]
