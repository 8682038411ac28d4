"""Data sets, found by name: ``adamodal.data.<name>`` defines ``SOURCE``, a DatasetSource class."""

from __future__ import annotations

import importlib
import pkgutil

from adamodal.data.base import Bundle, DatasetSource
from adamodal.errors import ConfigError

_NOT_DATASETS = {"base", "check", "fetch", "scenario", "partition"}


def dataset_names() -> list[str]:
    """All data set modules in this package."""
    import adamodal.data as pkg

    return sorted(
        m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in _NOT_DATASETS and not m.name.startswith("_")
    )


def get_source_class(name: str) -> type[DatasetSource]:
    if name not in dataset_names():
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")
    module = importlib.import_module(f"adamodal.data.{name}")
    return module.SOURCE


def get_source(name: str, options: dict[str, object] | None = None) -> DatasetSource:
    return get_source_class(name)(options)


__all__ = ["Bundle", "DatasetSource", "dataset_names", "get_source", "get_source_class"]
