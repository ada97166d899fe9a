"""The files the services read at run time: packaged defaults, or the user's own.

The package carries a commented ``journey.toml`` (every default setting), the
stage models in ``stages/`` and the email templates in ``templates/``, read
with :mod:`importlib.resources` so an installed wheel works from any folder.
A user's files override them through settings: ``JOURNEY_CONFIG`` (a settings
file), ``journey.stages_dir`` (stage models, searched before the packaged
ones) and ``dispatch.templates_dir`` (templates, each overriding the packaged
one of the same name). A configured path that does not exist is a
:class:`ConfigError` naming it, never skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PACKAGED = "packaged"
USER = "user"

#: The packaged settings file, stage models and templates.
DEFAULTS: Traversable = resources.files(__name__)
SETTINGS_FILE = "journey.toml"
STAGES = "stages"
TEMPLATES = "templates"
#: Files inside one template folder.
TEMPLATE_PARTS = ("subject.txt", "body.txt", "body.html")


class ConfigError(ValueError):
    """A configured file or folder is missing or unusable; the message names it."""


@dataclass(frozen=True)
class ConfigFile:
    """One file the services read: what it is, and where it was loaded from."""

    #: ``settings``, ``stage_model`` or ``template``.
    kind: str
    #: The model or template name, or the file name.
    name: str
    #: :data:`PACKAGED` or :data:`USER`.
    origin: str
    #: A filesystem path, or ``stream/defaults/...`` for packaged files.
    location: str

    def read_bytes(self) -> bytes:
        if self.origin == USER:
            return Path(self.location).read_bytes()
        return DEFAULTS.joinpath(*self.location.split("/")[2:]).read_bytes()

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "origin": self.origin,
            "location": self.location,
        }


def _packaged(*parts: str) -> ConfigFile | None:
    """The packaged file at ``parts`` (None if there is none)."""
    entry = DEFAULTS.joinpath(*parts)
    if not entry.is_file():
        return None
    return ConfigFile("", parts[-1], PACKAGED, "/".join(("stream", "defaults", *parts)))


def existing_dir(value: str, setting: str) -> Path | None:
    """``value`` as a folder that must exist (None for an empty setting)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{setting} {value!r} is not an existing folder")
    return path


def settings_file(path: str | Path | None, setting: str = "JOURNEY_CONFIG") -> ConfigFile:
    """The settings file: the user's ``path`` (which must exist), else the packaged one."""
    if path:
        user = Path(path).expanduser()
        if not user.is_file():
            raise ConfigError(f"settings file {str(path)!r} ({setting}) does not exist")
        return ConfigFile("settings", user.name, USER, str(user))
    found = _packaged(SETTINGS_FILE)
    assert found is not None, "the package lacks its journey.toml"
    return ConfigFile("settings", SETTINGS_FILE, PACKAGED, found.location)


def stage_model_file(name_or_path: str, stages_dir: str = "") -> ConfigFile:
    """The file of a stage model: a path to a ``.toml`` file, or a model name.

    A name is looked up in ``stages_dir`` (the user's folder, if set) first,
    then among the packaged models.
    """
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"stage model file {name_or_path!r} does not exist")
        return ConfigFile("stage_model", path.stem, USER, str(path))
    user_dir = existing_dir(stages_dir, "journey.stages_dir")
    if user_dir is not None and (user_dir / f"{name_or_path}.toml").is_file():
        return ConfigFile("stage_model", name_or_path, USER, str(user_dir / f"{name_or_path}.toml"))
    found = _packaged(STAGES, f"{name_or_path}.toml")
    if found is None:
        where = f"{stages_dir!r} or " if stages_dir else ""
        raise ConfigError(
            f"no stage model {name_or_path!r} in {where}the packaged models "
            f"({', '.join(packaged_models())})"
        )
    return ConfigFile("stage_model", name_or_path, PACKAGED, found.location)


def packaged_models() -> list[str]:
    """Names of the stage models the package carries."""
    return sorted(
        e.name.removesuffix(".toml") for e in DEFAULTS.joinpath(STAGES).iterdir() if e.is_file()
    )


def template_files(names: Iterable[str], templates_dir: str = "") -> Iterator[ConfigFile]:
    """Where each part of each named template comes from (user folder first)."""
    user_dir = existing_dir(templates_dir, "dispatch.templates_dir")
    for name in names:
        for part in TEMPLATE_PARTS:
            if user_dir is not None and (user_dir / name / part).is_file():
                yield ConfigFile("template", f"{name}/{part}", USER, str(user_dir / name / part))
                continue
            found = _packaged(TEMPLATES, name, part)
            if found is None:
                raise ConfigError(
                    f"no template {name}/{part} in "
                    + (f"{templates_dir!r} or " if templates_dir else "")
                    + "the packaged templates"
                )
            yield ConfigFile("template", f"{name}/{part}", PACKAGED, found.location)


def export(target: Path) -> list[Path]:
    """Copy the packaged settings file, stage models and templates into ``target``.

    Refuses to overwrite anything; returns the files written.
    """
    written: list[Path] = []
    pending = list(_walk(DEFAULTS, ()))
    clashes = [target.joinpath(*parts) for parts, _ in pending if target.joinpath(*parts).exists()]
    if clashes:
        raise ConfigError(f"{clashes[0]} exists; export into an empty folder")
    for parts, entry in pending:
        out = target.joinpath(*parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with entry.open("rb") as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        written.append(out)
    return written


def _walk(
    entry: Traversable, parts: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Traversable]]:
    for child in sorted(entry.iterdir(), key=lambda e: e.name):
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk(child, (*parts, child.name))
        elif not child.name.endswith((".py", ".pyc")):
            yield (*parts, child.name), child
