"""Flat, dotted configuration shared by TOML files and ``--set KEY=VALUE``.

Every key has a default whose type fixes how a value is parsed. Data sets and methods add
their own keys (``emoji.label``, ``fedprox.mu``) through their class attributes, so adding a
method never touches this file. Unknown keys are an error that lists the valid ones.

A named scenario (``scenario = "few-multimodal"``) is a TOML file of config keys shipped with
the package (``adamodal/scenarios/<name>.toml``, listed by ``adamodal scenarios``): one name
reproduces a published setting, and any key given explicitly still wins over it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import tomli_w

from adamodal.errors import ConfigError

#: core keys -> default value (the type of the default is the type of the key)
CORE_DEFAULTS: dict[str, Any] = {
    # a named scenario (adamodal/scenarios/<name>.toml): its keys sit below explicit ones
    "scenario": "",
    "dataset": "emoji",
    "method": "fedavg",
    "rounds": 20,
    "clients.multimodal": 16,
    "clients.image_only": 2,
    "clients.text_only": 2,
    "partition": "dirichlet",
    "partition.alpha": 0.5,
    "partition.classes": 2,
    # partition=aligned: a unimodal client's weight on the other modality's half of the classes
    "partition.leak": 0.05,
    "missing.image": 0.0,
    "missing.text": 0.0,
    "participation": 1.0,
    "local_epochs": 2,
    "batch_size": 32,
    "lr": 0.001,
    "optimizer": "adam",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "seed": 0,
    "device": "auto",
    "towers": "frozen",
    "model": "cnn",
    "text_model": "bow",
    "model.dim": 256,
    "model.dropout": 0.1,
    "split.val": 0.1,
    "split.test": 0.2,
    "split.global_test": 0.2,
    # identity groups held out for the server's public paired set (retrieval imputation)
    "split.public": 0.0,
    "data.max_items": 0,
    "domains.holdout": "",
    "eval.every": 1,
    "eval.max_rows": 2000,
    # score a model once per test view it shares with other clients (the same numbers)
    "eval.share_predictions": True,
    "threads": 1,
    # in-process clients: 0 = automatic (a worker process per idle core once the run's remaining
    # client work is large enough; none on a GPU), 1 = this process, N = N worker processes
    "workers": 0,
    "batch_clients": 0,
    # reliability: what the server accepts from clients (runtime/validate.py)
    "min_clients": 1,
    "client_timeout": 0.0,
    "max_update_norm": 1e4,
    "max_payload_mb": 1024.0,
    "aggregation": "mean",
    # client-level differential privacy of parameter uploads (FedAvg, FedProx, FedAvg-group)
    "dp.noise": 0.0,
    "dp.clip": 1.0,
    "dp.delta": 1e-5,
    "dp.mode": "client",
    # neighbouring data sets for epsilon: one client's data replaced (sensitivity 2 x clip) or
    # the client added/removed (1 x clip); see kit/privacy.py for why replace is the default
    "dp.adjacency": "replace",
}

#: keys whose value must be one of a fixed set (methods and data sets are checked by name)
CHOICES: dict[str, tuple[str, ...]] = {
    "partition": ("iid", "dirichlet", "classes", "aligned"),
    "optimizer": ("sgd", "adam", "adamw"),
    "towers": ("frozen", "small"),
    "model": ("cnn", "mlp"),
    "text_model": ("bow",),
    "dp.mode": ("client", "server"),
    "dp.adjacency": ("replace", "add_remove"),
}

#: (low, high, low_inclusive, high_inclusive) bounds for numeric keys
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "rounds": (0, 1e9, True, True),
    "clients.multimodal": (0, 1e6, True, True),
    "clients.image_only": (0, 1e6, True, True),
    "clients.text_only": (0, 1e6, True, True),
    "partition.alpha": (0, float("inf"), False, True),
    "partition.classes": (1, 1e6, True, True),
    "partition.leak": (0, 1, True, True),
    "missing.image": (0, 1, True, False),
    "missing.text": (0, 1, True, False),
    "participation": (0, 1, False, True),
    "local_epochs": (0, 1e6, True, True),
    "batch_size": (1, 1e9, True, True),
    "lr": (0, float("inf"), False, True),
    "momentum": (0, 1, True, False),
    "weight_decay": (0, float("inf"), True, True),
    "model.dim": (1, 1e6, True, True),
    "model.dropout": (0, 1, True, False),
    "split.val": (0, 1, True, False),
    "split.test": (0, 1, True, False),
    "split.global_test": (0, 1, True, False),
    "split.public": (0, 1, True, False),
    "data.max_items": (0, 1e12, True, True),
    "eval.every": (0, 1e9, True, True),
    "eval.max_rows": (1, 1e12, True, True),
    "threads": (0, 1024, True, True),
    "workers": (0, 1024, True, True),
    "batch_clients": (0, 1e6, True, True),
    "min_clients": (1, 1e6, True, True),
    "client_timeout": (0, float("inf"), True, False),
    "max_update_norm": (0, float("inf"), True, False),
    "max_payload_mb": (0, float("inf"), True, False),
    "dp.noise": (0, 1e6, True, True),
    "dp.clip": (0, float("inf"), False, False),
    "dp.delta": (0, 1, False, False),
}


def all_defaults() -> dict[str, Any]:
    """Core defaults plus every data set's and every method's own keys."""
    from adamodal.data import dataset_names, get_source_class
    from adamodal.methods import get_method_class, method_names

    defaults = dict(CORE_DEFAULTS)
    for name in dataset_names():
        for key, value in get_source_class(name).options_defaults.items():
            defaults[f"{name}.{key}"] = value
    for name in method_names():
        defaults.update(get_method_class(name).config_defaults)
    return defaults


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn nested TOML tables into dotted keys; a table and a scalar may share a stem
    (``partition = "dirichlet"`` and ``partition.alpha``), written as quoted dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _parse_value(key: str, raw: Any, default: Any) -> Any:
    """Coerce ``raw`` (a TOML value or a command-line string) to the type of ``default``."""
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if isinstance(default, int):
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        try:
            value = float(raw) if isinstance(raw, str) else raw
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
    if isinstance(default, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
        return value
    return str(raw)


class Config(dict):
    """A validated, fully resolved configuration: every known key is present."""

    def __getattr__(self, item: str) -> Any:  # cfg.rounds as a convenience for plain keys
        try:
            return self[item]
        except KeyError:
            raise AttributeError(item) from None

    def section(self, prefix: str) -> dict[str, Any]:
        """Keys under ``prefix.`` with the prefix removed (e.g. a data set's options)."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in self.items() if k.startswith(start)}

    def to_toml(self) -> str:
        return tomli_w.dumps(dict(sorted(self.items())))

    def save(self, path: Path) -> None:
        path.write_text(self.to_toml(), encoding="utf-8")


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}`` with a clear error for a bad item."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return _flatten(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable config file ({exc.strerror or exc})") from None


#: the package folder holding the named scenarios, one ``<name>.toml`` each
SCENARIO_DIR = "scenarios"
#: the one key of a scenario file that is not a config key: its line in ``adamodal scenarios``
DESCRIPTION = "description"


def _scenario_files() -> dict[str, Traversable]:
    folder = resources.files("adamodal").joinpath(SCENARIO_DIR)
    if not folder.is_dir():
        return {}
    return {f.name.removesuffix(".toml"): f for f in folder.iterdir() if f.name.endswith(".toml")}


def scenario_names() -> list[str]:
    """The scenarios shipped with the package, sorted."""
    return sorted(_scenario_files())


def read_scenario(name: str) -> tuple[str, dict[str, Any]]:
    """``(description, config keys)`` of a shipped scenario; the keys are checked by
    :func:`resolve` like a config file's, but a scenario may not name another scenario."""
    files = _scenario_files()
    if name not in files:
        raise ConfigError(f"scenario: unknown scenario {name!r}; available: {', '.join(sorted(files)) or '(none)'}")
    where = f"scenario {name} ({SCENARIO_DIR}/{name}.toml)"
    try:
        values = _flatten(tomllib.loads(files[name].read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML ({' '.join(str(exc).split())})") from None
    description = values.pop(DESCRIPTION, "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: {DESCRIPTION} must be a string")
    if "scenario" in values:
        raise ConfigError(f"{where}: a scenario cannot name another scenario")
    return description, values


def resolve(file_values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults <- the named scenario's keys <- file values <- command-line overrides, each key
    checked and typed. The scenario is the one ``scenario`` names in the last source that sets
    it, so ``--set scenario=`` switches a file's scenario off."""
    from adamodal.data import dataset_names
    from adamodal.methods import method_names

    defaults = all_defaults()
    values = dict(defaults)
    sources: list[tuple[str, Mapping[str, Any]]] = [("", file_values or {}), ("", overrides or {})]
    name = next((str(src["scenario"]).strip() for _, src in reversed(sources) if "scenario" in src), "")
    if name:
        sources.insert(0, (f"scenario {name}: ", read_scenario(name)[1]))
    for where, source in sources:
        unknown = sorted(k for k in source if k not in defaults)
        if unknown:
            raise ConfigError(
                f"{where}unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(defaults))}"
            )
        for key, raw in source.items():
            try:
                values[key] = _parse_value(key, raw, defaults[key])
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
    values["scenario"] = name

    for key, choices in CHOICES.items():
        if values[key] not in choices:
            raise ConfigError(f"{key}: {values[key]!r} is not one of {', '.join(choices)}")
    if values["dataset"] not in dataset_names():
        raise ConfigError(f"dataset: unknown dataset {values['dataset']!r}; available: {', '.join(dataset_names())}")
    if values["method"] not in method_names():
        raise ConfigError(f"method: unknown method {values['method']!r}; available: {', '.join(method_names())}")
    for key, (lo, hi, lo_inc, hi_inc) in BOUNDS.items():
        v = values[key]
        ok_lo = v >= lo if lo_inc else v > lo
        ok_hi = v <= hi if hi_inc else v < hi
        if not (ok_lo and ok_hi):
            lo_s = "[" if lo_inc else "("
            hi_s = "]" if hi_inc else ")"
            raise ConfigError(f"{key}: {v} is outside {lo_s}{lo}, {hi}{hi_s}")
    from adamodal.kit.aggregation import parse_aggregation

    try:
        parse_aggregation(values["aggregation"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if values["split.val"] + values["split.test"] >= 1:
        raise ConfigError("split.val + split.test must leave room for training (sum < 1)")
    if values["clients.multimodal"] + values["clients.image_only"] + values["clients.text_only"] == 0:
        raise ConfigError("no clients: set clients.multimodal, clients.image_only or clients.text_only")
    return Config(values)
