"""Shared fixtures: one small, real emoji scenario prepared once per test session."""

from __future__ import annotations

import dataclasses
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMALL = {
    "clients.multimodal": 3, "clients.image_only": 1, "clients.text_only": 1,
    "rounds": 2, "local_epochs": 2, "partition": "iid", "seed": 0, "device": "cpu",
    # clients in this process: tests replace methods' functions here (tests/runtime/test_workers.py
    # runs them in worker processes)
    "workers": 1,
}


@pytest.fixture(scope="session")
def small_experiment():
    """The real emoji data (frozen features, cached) with 5 clients: 3 image+text, 1 image-only,
    1 text-only. Tests swap the method with :func:`with_config`."""
    from adamodal.config import resolve
    from adamodal.runtime.simulator import prepare

    return prepare(resolve({}, SMALL), progress=False)


@pytest.fixture(scope="session")
def public_experiment():
    """The same 5 clients' scenario with a public paired set on the server (``split.public=0.1``;
    the clients hold a little less), for methods that need one (``Method.needs_public``)."""
    from adamodal.config import resolve
    from adamodal.runtime.simulator import prepare

    return prepare(resolve({}, {**SMALL, "split.public": 0.1}), progress=False)


@pytest.fixture(scope="session")
def experiment_for(small_experiment, request):
    """``experiment_for(method, **overrides)``: the same 5 clients prepared for what the method's
    model reads (frozen features, or raw inputs with ``towers=small``), and with the server's
    public set when the method needs one, so tests that run every method (``method_names()``)
    cover methods added later whatever their towers."""
    from adamodal.config import resolve
    from adamodal.methods import get_method_class
    from adamodal.runtime.simulator import prepare

    raw: list = []

    def get(method: str, **overrides):
        if get_method_class(method).needs_public:
            public = request.getfixturevalue("public_experiment")
            return with_config(public, method=method, split__public=0.1, **overrides)
        if "features" in get_method_class(method).input_kinds:
            return with_config(small_experiment, method=method, **overrides)
        if not raw:
            # raw inputs train whole towers: a quarter of the items keeps these tests quick
            raw.append(prepare(resolve({}, {**SMALL, "towers": "small", "data.max_items": 400}), progress=False))
        return with_config(raw[0], method=method, towers="small", data__max_items=400, **overrides)

    return get


def with_config(exp, **overrides):
    """The same prepared data with other (non-data) config values, e.g. another method or
    another model size (the model spec follows the config)."""
    from adamodal.config import resolve
    from adamodal.runtime.simulator import model_spec

    values = {**SMALL, **{k.replace("__", "."): v for k, v in overrides.items()}}
    cfg = resolve({}, values)
    return dataclasses.replace(exp, cfg=cfg, spec=model_spec(cfg, exp.bundle, exp.inputs))
