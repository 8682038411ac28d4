"""Methods, found by name: ``adamodal.methods.<name>`` defines ``METHOD``, a Method subclass."""

from __future__ import annotations

import importlib
import pkgutil

from adamodal.errors import ConfigError
from adamodal.methods.base import ClientContext, ClientInfo, Message, Method

_NOT_METHODS = {"base"}


def method_names() -> list[str]:
    import adamodal.methods as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in _NOT_METHODS and not m.name.startswith("_"))


def get_method_class(name: str) -> type[Method]:
    if name not in method_names():
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return importlib.import_module(f"adamodal.methods.{name}").METHOD


__all__ = ["ClientContext", "ClientInfo", "Message", "Method", "get_method_class", "method_names"]
