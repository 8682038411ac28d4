"""Config resolution: defaults, typed ``--set`` strings, TOML files, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from adamodal.config import (
    BOUNDS,
    CHOICES,
    CORE_DEFAULTS,
    Config,
    all_defaults,
    load_toml,
    parse_assignments,
    resolve,
)
from adamodal.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- defaults ------------------------------------------------------------------------------

def test_defaults_resolve() -> None:
    cfg = resolve()
    assert isinstance(cfg, Config)
    assert set(cfg) == set(all_defaults())
    for key, default in CORE_DEFAULTS.items():
        assert cfg[key] == default and type(cfg[key]) is type(default), key
    # the attribute shortcut and sections
    assert cfg.rounds == CORE_DEFAULTS["rounds"]
    assert cfg.section("clients") == {"multimodal": 16, "image_only": 2, "text_only": 2}
    with pytest.raises(AttributeError):
        _ = cfg.no_such_key


def test_every_choice_and_bound_key_has_a_default() -> None:
    for key in (*CHOICES, *BOUNDS):
        assert key in CORE_DEFAULTS, key


def test_method_and_dataset_keys_present() -> None:
    cfg = resolve()
    assert "fedprox.mu" in cfg and isinstance(cfg["fedprox.mu"], float)
    assert cfg["emoji.label"] == "category"
    assert cfg["emoji.variants"] is False
    assert cfg.section("emoji") == {"label": "category", "variants": False}
    cfg = resolve(overrides={"fedprox.mu": "0.5", "emoji.label": "subcategory"})
    assert cfg["fedprox.mu"] == 0.5 and cfg["emoji.label"] == "subcategory"


# ---- typed --set strings ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("rounds", "7", 7),
        ("rounds", "3.0", 3),
        ("batch_size", "1e2", 100),
        ("lr", "0.05", 0.05),
        ("lr", "1", 1.0),
        ("partition.alpha", "2", 2.0),
        ("emoji.variants", "true", True),
        ("emoji.variants", "Yes", True),
        ("emoji.variants", "on", True),
        ("emoji.variants", "1", True),
        ("emoji.variants", "false", False),
        ("emoji.variants", "off", False),
        ("emoji.variants", "0", False),
        ("optimizer", "sgd", "sgd"),
        ("device", "cpu", "cpu"),
    ],
)
def test_set_strings_coerce_by_default_type(key: str, raw: str, expected: object) -> None:
    cfg = resolve(overrides=parse_assignments([f"{key}={raw}"]))
    assert cfg[key] == expected
    assert type(cfg[key]) is type(expected)


def test_parse_assignments() -> None:
    assert parse_assignments(["a=1", " b.c = x=y "]) == {"a": "1", "b.c": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["rounds"])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(overrides={"roundz": "3"})
    msg = str(info.value)
    assert "roundz" in msg
    assert "valid keys" in msg
    for key in ("rounds", "clients.multimodal", "fedprox.mu", "emoji.label"):
        assert key in msg
    with pytest.raises(ConfigError, match="no_such"):
        resolve(file_values={"no_such.key": 1})


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("partition", "random"),
        ("optimizer", "rmsprop"),
        ("towers", "huge"),
        ("model", "resnet"),
        ("dataset", "mnist"),
        ("method", "scaffold"),
    ],
)
def test_bad_enum_names_key(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(overrides={key: raw})
    assert str(info.value).startswith(f"{key}:")
    assert raw in str(info.value)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("missing.image", "1.0"),
        ("missing.text", "-0.1"),
        ("participation", "0"),
        ("participation", "1.5"),
        ("partition.alpha", "0"),
        ("lr", "0"),
        ("batch_size", "0"),
        ("partition.classes", "0"),
        ("model.dropout", "1"),
        ("eval.every", "-1"),
        ("rounds", "-1"),
    ],
)
def test_out_of_range_names_key(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(overrides={key: raw})
    assert str(info.value).startswith(f"{key}:")
    assert "outside" in str(info.value)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("emoji.variants", "maybe"),
        ("emoji.variants", "2"),
        ("rounds", "2.5"),
        ("rounds", "ten"),
        ("rounds", True),
        ("lr", "fast"),
        ("lr", False),
    ],
)
def test_bad_type_names_key(key: str, raw: object) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(overrides={key: raw})
    assert str(info.value).startswith(f"{key}:")


def test_cross_key_checks() -> None:
    with pytest.raises(ConfigError, match="split.val"):
        resolve(overrides={"split.val": "0.5", "split.test": "0.5"})
    with pytest.raises(ConfigError, match="no clients"):
        resolve(overrides={"clients.multimodal": 0, "clients.image_only": 0,
                           "clients.text_only": 0})


# ---- TOML files --------------------------------------------------------------------------------

def test_toml_nested_tables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'method = "fedprox"\nrounds = 5\n\n[clients]\nmultimodal = 3\nimage_only = 1\n\n'
        "[fedprox]\nmu = 0.1\n\n[emoji]\nvariants = true\n",
    )
    values = load_toml(path)
    assert values["clients.multimodal"] == 3 and values["fedprox.mu"] == 0.1
    cfg = resolve(values)
    assert cfg["method"] == "fedprox" and cfg["rounds"] == 5
    assert cfg["clients.multimodal"] == 3 and cfg["clients.image_only"] == 1
    assert cfg["clients.text_only"] == CORE_DEFAULTS["clients.text_only"]
    assert cfg["fedprox.mu"] == 0.1 and cfg["emoji.variants"] is True


def test_toml_quoted_dotted_keys(tmp_path: Path) -> None:
    # a scalar and a table sharing a stem ("partition" and "partition.alpha") need quoted keys
    path = _write(
        tmp_path, 'partition = "classes"\n"partition.classes" = 3\n"partition.alpha" = 0.25\n'
    )
    cfg = resolve(load_toml(path))
    assert cfg["partition"] == "classes"
    assert cfg["partition.classes"] == 3 and cfg["partition.alpha"] == 0.25


def test_toml_int_for_float_key_is_coerced(tmp_path: Path) -> None:
    cfg = resolve(load_toml(_write(tmp_path, "lr = 1\n")))
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)


def test_toml_unknown_key_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="clients.tablet"):
        resolve(load_toml(_write(tmp_path, "[clients]\ntablet = 3\n")))
    with pytest.raises(ConfigError, match="^rounds:"):
        resolve(load_toml(_write(tmp_path, 'rounds = "many"\n', "b.toml")))


def test_toml_missing_and_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(_write(tmp_path, "rounds = = 3\n"))


def test_command_line_overrides_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "rounds = 5\nlr = 0.01\n[clients]\nmultimodal = 3\n")
    cfg = resolve(load_toml(path), parse_assignments(["rounds=9", "clients.multimodal=4"]))
    assert cfg["rounds"] == 9
    assert cfg["clients.multimodal"] == 4
    assert cfg["lr"] == 0.01  # from the file, not overridden


def test_to_toml_round_trip(tmp_path: Path) -> None:
    cfg = resolve(
        overrides={
            "method": "fedprox", "fedprox.mu": "0.2", "rounds": "3", "partition": "iid",
            "partition.alpha": "1.5", "emoji.variants": "true", "missing.image": "0.3",
            "clients.text_only": "0", "device": "cpu",
        }
    )
    path = tmp_path / "saved.toml"
    cfg.save(path)
    again = resolve(load_toml(path))
    assert again == cfg
    for key, value in cfg.items():
        assert type(again[key]) is type(value), key
    assert resolve(load_toml(_write(tmp_path, cfg.to_toml(), "b.toml"))) == cfg
