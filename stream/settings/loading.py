"""Settings built from the packaged defaults, a settings file and ``JOURNEY_*`` variables,
and written back out (as a dict, as variables, as the files in use)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from stream.defaults import (
    ConfigError,
    ConfigFile,
    settings_file,
    stage_model_file,
    template_files,
)
from stream.settings.model import SECTIONS, Settings

ENV_PREFIX = "JOURNEY_"


def _coerce(value: Any, annotation: Any) -> Any:
    target = typing.get_origin(annotation) or annotation
    if target is tuple:
        # Lists of tables (abandonment rules); JSON in the environment.
        return tuple(orjson.loads(value) if isinstance(value, str) else value)
    if isinstance(target, type) and issubclass(target, Mapping):
        if isinstance(value, str):
            # "k1=v1,k2=v2" from the environment.
            return dict(item.split("=", 1) for item in value.split(",") if item)
        return dict(value)
    if target is bool and isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if target in (int, float) and isinstance(value, str | int | float):
        return target(value)
    if target is types.UnionType:
        return value
    return value if target is Any else target(value)


def _merge(section: Any, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    changes = {}
    for k, v in values.items():
        try:
            changes[k] = _coerce(v, hints[k])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {k} = {v!r} is not valid: {exc}") from None
    return replace(section, **changes)


def load_settings(
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file and ``JOURNEY_*`` variables.

    ``overrides`` (section -> field -> value) win over everything; tests and the
    CLI use them.
    """
    env = dict(os.environ if environ is None else environ)
    source = settings_file(
        config_file or env.get("JOURNEY_CONFIG"),
        "--config" if config_file else "JOURNEY_CONFIG",
    )
    path = source.location
    try:
        data: dict[str, Any] = tomllib.loads(source.read_bytes().decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings file {path!r} is not valid TOML: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
    settings = Settings(source=source)
    for name in SECTIONS:
        section = getattr(settings, name)
        file_values = data.get(name, {})
        env_values = {}
        for f in fields(section):
            var = f"{ENV_PREFIX}{name}_{f.name}".upper()
            if var in env:
                env_values[f.name] = env[var]
        section = _merge(section, file_values, f"{path}:[{name}]")
        section = _merge(section, env_values, "environment")
        if overrides and name in overrides:
            section = _merge(section, overrides[name], "overrides")
        settings = replace(settings, **{name: section})
    return settings


def with_environ(settings: Settings, environ: Mapping[str, str], where: str) -> Settings:
    """``settings`` with the ``JOURNEY_<SECTION>_<FIELD>`` values of ``environ`` applied."""
    for name in SECTIONS:
        section = getattr(settings, name)
        values = {}
        for f in fields(section):
            var = f"{ENV_PREFIX}{name}_{f.name}".upper()
            if var in environ:
                values[f.name] = environ[var]
        if values:
            settings = replace(settings, **{name: _merge(section, values, where)})
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain-data view, for ``journey config`` and logs (secrets masked)."""
    out = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    for section in out.values():
        for key, value in section.items():
            if ("password" in key or "secret" in key) and value:
                section[key] = "***"
            elif key == "api_tokens" and value:
                section[key] = {f"***{i}": role for i, role in enumerate(value.values(), 1)}
            elif key == "endpoints" and value:
                section[key] = [{**e, "secret": "***"} if e.get("secret") else e for e in value]
            elif key == "url" and isinstance(value, str):
                section[key] = mask_url(value)
    return out


def redis_password(url: str) -> str | None:
    """The password in a ``redis://[user]:password@host`` URL, or None."""
    return urlsplit(url).password


def mask_url(url: str) -> str:
    """``url`` with the password of its user info (``redis://:pw@host``) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def to_environ(settings: Settings) -> dict[str, str]:
    """``JOURNEY_*`` variables that rebuild ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name in SECTIONS:
        values = getattr(settings, name)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, tuple):
                text = orjson.dumps(value).decode()
            elif isinstance(value, Mapping):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{name}_{f.name}".upper()] = text
    return env


def templates_in_use(settings: Settings) -> list[str]:
    """The template names the configured abandonment rules and follow-ups send."""
    rules = (*settings.journey.abandonment, *settings.journey.followups)
    return sorted({str(rule["template"]) for rule in rules if rule.get("template")})


def files_in_use(settings: Settings) -> list[ConfigFile]:
    """Every file the services read at run time, with where it comes from.

    Raises :class:`ConfigError` naming a configured file or folder that is missing.
    """
    out = [settings.source or settings_file(None)]
    out.append(stage_model_file(settings.journey.stage_model, settings.journey.stages_dir))
    out.extend(template_files(templates_in_use(settings), settings.dispatch.templates_dir))
    return out
