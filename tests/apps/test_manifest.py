"""consortium.toml: a missing or mistyped field fails naming the field and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.apps import load_app_spec, parse_override
from consortium.core.errors import ConfigError

GOOD = """
[app]
name = "demo"
version = "1.0"
server = "my_app.server:app"
client = "my_app.client:app"

[run-config]
num-rounds = 3
lr = 0.1
optimizer = "sgd"
proximal = false

[simulation]
num-nodes = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "consortium.toml").write_text(text)
    return tmp_path


def test_good_manifest(tmp_path: Path) -> None:
    spec = load_app_spec(write(tmp_path, GOOD))
    assert spec.name == "demo"
    assert spec.manifest.simulation.num_nodes == 4
    assert spec.run_config() == {"num-rounds": 3, "lr": 0.1, "optimizer": "sgd", "proximal": False}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace('server = "my_app.server:app"\n', ""), "missing field 'app.server'"),
        (lambda t: t.replace('version = "1.0"', 'versoin = "1.0"'), "unknown field 'app.versoin'"),
        (lambda t: t.replace('"my_app.client:app"', '"my_app.client"'), "field 'app.client'"),
        (
            lambda t: t.replace("num-nodes = 4", 'num-nodes = "four"'),
            "field 'simulation.num-nodes'",
        ),
        (lambda t: t.replace("num-nodes = 4", "num-nodes = 0"), "field 'simulation.num-nodes'"),
        (lambda t: t.replace("[app]", "[apps]"), "missing field 'app'"),
        (lambda t: t + "\nnum-nodes = 5\n", "not valid TOML"),
    ],
)
def test_bad_manifest_names_field_and_file(tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as info:
        load_app_spec(tmp_path)
    message = str(info.value)
    assert field in message
    assert str(tmp_path / "consortium.toml") in message


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no consortium\.toml"):
        load_app_spec(tmp_path)


def test_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    spec = load_app_spec(write(tmp_path, GOOD))
    cfg = spec.run_config(
        dict(parse_override(o) for o in ["lr=1", "optimizer=adam", "num-rounds=5"])
    )
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["optimizer"] == "adam"
    assert cfg["num-rounds"] == 5
    with pytest.raises(ConfigError, match="unknown run-config key 'lrr'"):
        spec.run_config({"lrr": 0.1})
    with pytest.raises(ConfigError, match="'num-rounds' must be int"):
        spec.run_config({"num-rounds": "many"})
    with pytest.raises(ConfigError, match="'proximal' must be bool"):
        spec.run_config({"proximal": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")


def test_an_app_that_declares_no_run_config_takes_every_key_not_just_the_first(
    tmp_path: Path,
) -> None:
    bare = GOOD[: GOOD.index("[run-config]")]
    spec = load_app_spec(write(tmp_path, bare))
    assert spec.run_config({"rounds": 3, "nodes": 2, "timeout": 30.0}) == {
        "rounds": 3, "nodes": 2, "timeout": 30.0,
    }  # fmt: skip


def test_a_manifest_that_is_not_utf8_names_the_file_and_byte(tmp_path: Path) -> None:
    (tmp_path / "consortium.toml").write_bytes(GOOD.replace("sgd", "sgd\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"consortium.toml: not UTF-8 text \(byte \d+ is"):
        load_app_spec(tmp_path)


@pytest.mark.parametrize("literal", ["nan", "-nan", "[1.0, nan]"])
def test_nan_in_the_run_config_is_refused_by_name(tmp_path: Path, literal: str) -> None:
    write(tmp_path, GOOD.replace("lr = 0.1", f"lr = {literal}"))
    with pytest.raises(ConfigError, match="run-config 'lr' is NaN"):
        load_app_spec(tmp_path)
    spec = load_app_spec(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="run-config 'lr' is NaN"):
        spec.run_config(dict([parse_override(f"lr={literal}")]))


@pytest.mark.parametrize("text", ["model=boost vsb-key-bits=512", "lr=0.1 rounds=3"])
def test_two_settings_in_one_run_config_option_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="repeat the option for each key"):
        parse_override(text)


def test_a_string_value_with_spaces_is_still_one_value() -> None:
    assert parse_override("note=two words") == ("note", "two words")
    assert parse_override('formula="a = b c=d"') == ("formula", "a = b c=d")
