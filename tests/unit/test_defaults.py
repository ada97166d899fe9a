"""The packaged defaults and the user's files that override them."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from stream import cli
from stream.defaults import (
    PACKAGED,
    USER,
    ConfigError,
    export,
    packaged_models,
    stage_model_file,
    template_files,
)
from stream.dispatch.render import Renderer
from stream.journey.stages import load_model
from stream.settings import Settings, files_in_use, load_settings, templates_in_use
from tests.builders import tracking_links, trigger


def test_packaged_settings_file_equals_the_code_defaults() -> None:
    # The commented journey.toml is the reference users copy: it must not drift.
    loaded = load_settings(environ={})
    assert loaded == Settings()
    assert loaded.source is not None
    assert loaded.source.origin == PACKAGED


def test_a_missing_settings_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope.toml.*JOURNEY_CONFIG"):
        load_settings(environ={"JOURNEY_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=r"nope.toml.*--config"):
        load_settings(missing, environ={})


def test_user_settings_file_overrides_and_environment_wins(tmp_path: Path) -> None:
    own = tmp_path / "journey.toml"
    own.write_text("[topics]\npartitions = 6\n[worker]\nweb_port = 7000\n")
    s = load_settings(environ={"JOURNEY_CONFIG": str(own), "JOURNEY_WORKER_WEB_PORT": "7100"})
    assert s.topics.partitions == 6
    assert s.worker.web_port == 7100
    assert s.source is not None and s.source.origin == USER


def test_unknown_sections_and_bad_values_are_errors(tmp_path: Path) -> None:
    own = tmp_path / "journey.toml"
    own.write_text("[brokers]\nurl = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown section"):
        load_settings(own, environ={})
    with pytest.raises(ConfigError, match=r"JOURNEY|environment"):
        load_settings(environ={"JOURNEY_TOPICS_PARTITIONS": "many"})


def test_stage_models_come_from_the_package_or_the_users_folder(tmp_path: Path) -> None:
    assert set(packaged_models()) >= {"five-stage", "see-think-do-care"}
    assert stage_model_file("five-stage").origin == PACKAGED
    own = tmp_path / "stages"
    own.mkdir()
    text = stage_model_file("five-stage").read_bytes().decode()
    (own / "five-stage.toml").write_text(text.replace('name = "five-stage"', 'name = "ours"'))
    found = stage_model_file("five-stage", str(own))
    assert (found.origin, found.location) == (USER, str(own / "five-stage.toml"))
    assert load_model("five-stage", own).name == "ours"
    # Names the user's folder lacks still come from the package.
    assert load_model("see-think-do-care", own).name == "see-think-do-care"
    assert load_model(str(own / "five-stage.toml")).name == "ours"


def test_missing_stage_models_and_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no stage model 'nine-stage'"):
        load_model("nine-stage")
    with pytest.raises(ConfigError, match=r"journey.stages_dir .*gone"):
        load_model("five-stage", tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_model(str(tmp_path / "model.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("stages = ['only-one']\n")
    with pytest.raises(ConfigError, match=r"broken.toml"):
        load_model(str(broken))


def test_a_users_template_overrides_only_its_own_files(tmp_path: Path) -> None:
    own = tmp_path / "templates"
    (own / "cart_abandoned").mkdir(parents=True)
    (own / "cart_abandoned" / "subject.txt").write_text("Still thinking, {{ first_name }}?\n")
    rendered = Renderer(own).render(trigger(first_name="Ada"), tracking_links())
    assert rendered.subject == "Still thinking, Ada?"
    # The body still comes from the package, and so do the other templates.
    assert "Ada" in rendered.text
    origins = {f.name: f.origin for f in template_files(["cart_abandoned", "welcome"], str(own))}
    assert origins["cart_abandoned/subject.txt"] == USER
    assert origins["cart_abandoned/body.html"] == PACKAGED
    assert origins["welcome/subject.txt"] == PACKAGED


def test_missing_templates_and_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dispatch.templates_dir .*nowhere"):
        Renderer(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"no template nope/subject.txt"):
        list(template_files(["nope"]))


def test_files_in_use_lists_every_file_the_services_read() -> None:
    settings = load_settings(environ={})
    files = files_in_use(settings)
    kinds = [f.kind for f in files]
    assert kinds[:2] == ["settings", "stage_model"]
    templates = {f.name.split("/")[0] for f in files if f.kind == "template"}
    assert templates == set(templates_in_use(settings))
    assert {"cart_abandoned", "welcome"} <= templates
    assert all(f.origin == PACKAGED for f in files)


def test_journey_config_shows_where_each_file_comes_from(tmp_path: Path) -> None:
    own = tmp_path / "stages"
    own.mkdir()
    (own / "mine.toml").write_bytes(stage_model_file("five-stage").read_bytes())
    settings_file = tmp_path / "journey.toml"
    settings_file.write_text(f'[journey]\nstage_model = "mine"\nstages_dir = "{own}"\n')
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["--config", str(settings_file), "config"]) == 0
    shown = json.loads(out.getvalue())
    by_kind = {f["kind"]: f for f in shown["files"]}
    assert by_kind["settings"] == {
        "kind": "settings",
        "name": "journey.toml",
        "origin": USER,
        "location": str(settings_file),
    }
    assert by_kind["stage_model"]["origin"] == USER
    assert by_kind["stage_model"]["location"] == str(own / "mine.toml")
    assert by_kind["template"]["origin"] == PACKAGED
    assert shown["settings"]["dispatch"]["tracking_secret"] == "***"


def test_journey_config_names_a_missing_folder_and_exits_2(tmp_path: Path) -> None:
    settings_file = tmp_path / "journey.toml"
    settings_file.write_text(f'[dispatch]\ntemplates_dir = "{tmp_path / "gone"}"\n')
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, redirect_stderr(err):
        cli.main(["--config", str(settings_file), "config"])
    assert exit_info.value.code == 2
    assert (
        f"dispatch.templates_dir '{tmp_path / 'gone'}' is not an existing folder" in err.getvalue()
    )


def test_export_writes_editable_copies_and_never_overwrites(tmp_path: Path) -> None:
    written = export(tmp_path / "conf")
    names = {p.relative_to(tmp_path / "conf").as_posix() for p in written}
    assert "journey.toml" in names
    assert "stages/five-stage.toml" in names
    assert "templates/cart_abandoned/body.html" in names
    assert not any(n.endswith(".py") for n in names)
    # The exported files work as the user's own.
    s = load_settings(tmp_path / "conf" / "journey.toml", environ={})
    assert s == Settings()
    assert load_model("five-stage", tmp_path / "conf" / "stages") == load_model("five-stage")
    with pytest.raises(ConfigError, match=r"exists"):
        export(tmp_path / "conf")


def test_journey_config_masks_passwords_in_urls() -> None:
    from stream.settings import as_dict

    s = load_settings(environ={"JOURNEY_REDIS_URL": "redis://:hunter2@redis:6379/0"})
    shown = as_dict(s)
    assert shown["redis"]["url"] == "redis://:***@redis:6379/0"
    assert "hunter2" not in json.dumps(shown)


def test_global_options_before_a_pass_through_command(tmp_path: Path) -> None:
    own = tmp_path / "journey.toml"
    own.write_text("[topics]\npartitions = 4\n")
    out = tmp_path / "events.jsonl"
    code = cli.main(["--config", str(own), "simulate", "--customers", "3", "--out", str(out)])
    assert code == 0
    assert out.read_text().count("\n") > 3
