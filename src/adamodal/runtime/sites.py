"""Site-local data: in a deployment each site loads only its own folder, the server only its test set.

For a data set a consortium brings itself (``DatasetSource.site_local``: ``folder``,
``mimic_cxr``, ``iu_xray``) a hospital has one folder, its own. Its SuperNode is started with
``--data SITE_DIR`` and :func:`prepare_site` reads that folder alone (``folder``: one client's
``images/``, ``texts/``, ``labels.csv``; the others: the site's subset in the data set's own
layout), then splits its rows into train/val/test with the client's own seed, exactly as the
scenario splits a predefined client (:func:`adamodal.data.scenario.site_client`).

The server opens no site's files. It learns each client's group, modalities, training-set size
and label names from the site's answer to the ``query`` message (a :class:`Declaration`), checks
that every site (and its own test set) uses one label space, and builds its side of the run
with :func:`server_experiment`: the model spec follows from the config and the agreed labels,
the test set (optional) from ``<dataset>.root`` (``folder``: only ``ROOT/test/``, in a client
folder's layout). Without one the run reports federated evaluation only: each client on its own
test split, pooled per group.

Both sides derive the model spec from the same inputs (the data set's modalities, the towers,
the image size, the label names), so a text-only site builds the same model as an image+text
one; a modality a site lacks is zero-filled and masked, as in process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamodal.cache import cache_dir
from adamodal.config import Config
from adamodal.data import get_source, get_source_class
from adamodal.data.base import Bundle
from adamodal.data.folder import TEST_FOLDER
from adamodal.data.scenario import ClientSpec, Scenario, site_client, test_views
from adamodal.devices import resolve_device
from adamodal.errors import ConfigError, DataError
from adamodal.kit.tensors import Tensors, materialize
from adamodal.methods.base import ClientInfo
from adamodal.model import ModelSpec
from adamodal.runtime.clients import ClientData
from adamodal.runtime.simulator import Experiment
from adamodal.towers.features import HASH_VOCAB, IMAGE_DIM, TEXT_DIM, build_inputs


def is_site_local(cfg: Mapping[str, Any]) -> bool:
    """True when the run's data set keeps each site's data on the site (see module docstring)."""
    return bool(get_source_class(str(cfg["dataset"])).site_local)


@dataclass(frozen=True)
class Declaration:
    """What a site tells the server about its client (its ``query`` answer): never its data."""

    cid: int
    group: str
    modalities: tuple[str, ...]
    num_train: int
    task: str
    classes: tuple[str, ...]

    def info(self) -> ClientInfo:
        return ClientInfo(self.cid, self.group, self.modalities, self.num_train)


@dataclass
class Site:
    """One site's prepared client: its data as tensors, the run's model spec, its declaration."""

    data: ClientData
    spec: ModelSpec
    declaration: Declaration


def _load_folder(cfg: Config, folder: Path) -> Bundle:
    """``folder`` alone, in the data set's layout, as one site's items (no predefined clients,
    no predefined test split: the site splits its own rows)."""
    dataset = str(cfg["dataset"])
    options = cfg.section(dataset)
    options["root"] = str(folder)
    if "layout" in options:
        options["layout"] = "site"  # folder: ROOT is one client's folder
    if "reports" in options:
        options["reports"] = ""  # the site's reports are in its own folder
    if "iu_reports" in options:
        options["iu_reports"] = False  # another hospital's reports are not this site's
    bundle = get_source(dataset, options).load(cache_dir())
    return dataclasses.replace(bundle, clients=None, client_names=None, fixed_test=None)


def run_spec(cfg: Config, task: str, classes: tuple[str, ...] | list[str]) -> ModelSpec:
    """The model spec of a site-local run, from the config and the agreed label names only, so
    the server and every site (whatever modalities it holds) build the same model."""
    source = get_source(str(cfg["dataset"]), cfg.section(str(cfg["dataset"])))
    mods = tuple(source.modalities)
    if str(cfg["towers"]) == "frozen":
        kind, img_shape, txt_dim = "features", (IMAGE_DIM,), TEXT_DIM
    else:  # raw greyscale pixels (one channel) and hashed words
        size = int(source.image_size()) if hasattr(source, "image_size") else 64
        kind, img_shape, txt_dim = "raw", (1, size, size), HASH_VOCAB
    has_img, has_txt = "image" in mods, "text" in mods
    return ModelSpec(
        task=task, num_classes=len(classes), modalities=mods, input_kind=kind,
        img_dim=int(np.prod(img_shape)) if has_img else None, txt_dim=txt_dim if has_txt else None,
        img_shape=img_shape if has_img else None, dim=int(cfg["model.dim"]), dropout=float(cfg["model.dropout"]),
        image_tower=str(cfg["model"]), text_tower=str(cfg["text_model"]),
    )


def _complete(t: Tensors, spec: ModelSpec) -> Tensors:
    """A modality the site's data lacks entirely becomes zeros (masked off), shaped as the
    run's model expects: what an in-process client of that group holds."""
    n = len(t)
    x_img, x_txt = t.x_img, t.x_txt
    if x_img is None and spec.img_shape is not None:
        x_img = torch.zeros((n, *spec.img_shape), dtype=torch.float32 if spec.input_kind == "features" else torch.uint8)
    if x_txt is None and spec.txt_dim is not None:
        x_txt = (torch.zeros((n, spec.txt_dim), dtype=torch.float32) if spec.input_kind == "features"
                 else torch.zeros((n, 1), dtype=torch.int64))
    return Tensors(x_img, x_txt, t.m_img, t.m_txt, t.y)


def empty_view(spec: ModelSpec) -> Tensors:
    """No rows: a site holds none of the server's test set."""
    y = torch.zeros((0, spec.num_classes)) if spec.task == "multilabel" else torch.zeros(0, dtype=torch.long)
    none = torch.zeros(0, dtype=torch.bool)
    return _complete(Tensors(None, None, none, none.clone(), y), spec)


def _check_split(cfg: Config) -> None:
    if float(cfg.get("split.public", 0.0) or 0.0) > 0:
        raise ConfigError("split.public: a site-local deployment has no pooled data to hold a public set out of; "
                          "set split.public=0")


def no_data_folder(cfg: Mapping[str, Any]) -> ConfigError:
    """The error of a deployed site that was not told where its data is."""
    return ConfigError(f"dataset {cfg['dataset']} keeps each site's data on the site: start the SuperNode "
                       "with --data SITE_DIR (the folder holding this site's data)")


def prepare_site(cfg: Config, cid: int, folder: str | Path | None) -> Site:
    """Client ``cid`` from this site's own folder only (``--data SITE_DIR``)."""
    _check_split(cfg)
    if not folder:
        raise no_data_folder(cfg)
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"{path}: the site's data folder (--data) is not a folder")
    bundle = _load_folder(cfg, path)
    spec = run_spec(cfg, bundle.task, bundle.classes)
    client = site_client(bundle, cfg, cid, path.name)
    device = resolve_device(str(cfg["device"]))
    inputs = build_inputs(bundle, str(cfg["towers"]), cache_dir(), device=str(device), progress=False)
    if int(cfg["threads"]) > 0:
        torch.set_num_threads(int(cfg["threads"]))  # what prepare() does
    for have, want, what in ((inputs.img_shape, spec.img_shape, "image"), (inputs.txt_dim, spec.txt_dim, "text")):
        if have is not None and have != want:
            raise DataError(f"{path}: the site's {what} inputs have shape {have}, the run's model expects {want}")
    t = {s: _complete(materialize(inputs, bundle.labels, client.splits[s]), spec) for s in ("train", "val", "test")}
    if len(t["train"]) == 0:
        raise DataError(f"{path}: the site has no training samples; lower split.val/split.test")
    data = ClientData(cid, client.group, client.modalities, t["train"], t["val"], t["test"])
    decl = Declaration(cid, client.group, tuple(client.modalities), len(t["train"]), bundle.task, tuple(bundle.classes))
    return Site(data, spec, decl)


def _labels(task: str, classes: tuple[str, ...]) -> str:
    return f"{task}: {', '.join(classes) or 'none'}"


def agreed_labels(declared: dict[int, Declaration], test: tuple[str, Bundle] | None = None) -> tuple[str, tuple[str, ...]]:
    """The one label space of the run (task and label names, in label order); a site, or the
    server's test set (``(where, bundle)``), that differs is one error naming it."""
    if not declared:
        raise DataError("no site declared its data")
    first = min(declared)
    ref = declared[first]
    for cid, d in sorted(declared.items()):
        if (d.task, d.classes) != (ref.task, ref.classes):
            raise DataError(
                f"site client-id {cid}: its labels ({_labels(d.task, d.classes)}) differ from site client-id "
                f"{first}'s ({_labels(ref.task, ref.classes)}); every site must use the same label names")
    if test is not None:
        where, bundle = test
        if (bundle.task, tuple(bundle.classes)) != (ref.task, ref.classes):
            raise DataError(
                f"{where}: the server's test set labels ({_labels(bundle.task, tuple(bundle.classes))}) differ "
                f"from the sites' ({_labels(ref.task, ref.classes)})")
    return ref.task, ref.classes


def server_test_folder(cfg: Config) -> Path | None:
    """Where the server's own test set is: ``folder``: ``ROOT/test/``; the other data sets: ROOT
    in their layout. ``None`` (federated evaluation only) when no root is set, or ``folder``'s
    root has no ``test/``."""
    dataset = str(cfg["dataset"])
    raw = str(cfg.get(f"{dataset}.root", "") or "").strip()
    if not raw:
        return None
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {dataset}.root (the server's test set) is not a folder")
    if dataset == "folder":
        return root / TEST_FOLDER if (root / TEST_FOLDER).is_dir() else None
    return root


def server_experiment(cfg: Config, declared: dict[int, Declaration]) -> Experiment:
    """The server's side of a site-local run: the clients as they declared themselves, the
    model spec, and the server's test set (or none). Opens no site's files."""
    _check_split(cfg)
    folder = server_test_folder(cfg)
    bundle = None if folder is None else _load_folder(cfg, folder)
    task, classes = agreed_labels(declared, None if bundle is None else (str(folder), bundle))
    spec = run_spec(cfg, task, classes)
    infos = [d.info() for _, d in sorted(declared.items())]
    views = {}
    test: dict[str, Tensors] = {}
    inputs = None
    if bundle is not None:
        device = resolve_device(str(cfg["device"]))
        inputs = build_inputs(bundle, str(cfg["towers"]), cache_dir(), device=str(device), progress=False)
        views = test_views(bundle, np.arange(len(bundle)))
        test = {cond: _complete(materialize(inputs, bundle.labels, v), spec) for cond, v in views.items()}
    if int(cfg["threads"]) > 0:
        torch.set_num_threads(int(cfg["threads"]))
    scenario = Scenario(clients=[ClientSpec(cid=i.cid, group=i.group, domain=0) for i in infos], test=views,
                        domains=list(bundle.domains) if bundle is not None else ["default"])
    return Experiment(cfg, bundle, inputs, scenario, spec, [], test, {}, None, declared=infos)
