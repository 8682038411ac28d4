"""The ClientApp: one SuperNode = one client of the scenario.

Which client a SuperNode is comes from its node config: ``client-id`` (a deployment,
``adamodal flower supernode --client-id I``) or Flower's ``partition-id`` (a simulation with
virtual SuperNodes). Where its data is comes from ``data-path`` (``--data``): for a data set
the sites bring themselves (``folder``, ``mimic_cxr``, ``iu_xray``) it is the site's own
folder and nothing else is read (:mod:`adamodal.runtime.sites`); for the built-in benchmark
data sets it is the adamodal data cache (the folder ``adamodal data fetch`` fills), from which
the site derives its share of the simulator's partition.

Flower rebuilds the ClientApp for every message, so anything kept between rounds (a method's
personal parameters, ``ClientContext.state``) lives in Flower's ``context.state``; it is also
saved on the site's disk after every round, because a resumed run is a new Flower run with an
empty ``context.state``. The data
are prepared deterministically from the run's config, the same way the simulator does, and
kept in a per-process cache (Flower's simulation reuses its worker processes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp

from adamodal.errors import AdamodalError
from adamodal.flower.app import CONFIG_KEY
from adamodal.flower.records import control_of, eval_to_records, from_records, to_records
from adamodal.kit.tensors import Tensors
from adamodal.methods.base import ClientContext, ClientInfo, Method
from adamodal.model import ModelSpec
from adamodal.runtime.clients import ClientData, client_step, derive_seed, evaluate_client
from adamodal.runtime.sites import is_site_local, no_data_folder

STATE_KEY = "adamodal.state"

_log = logging.getLogger("adamodal.flower.client_app")

app = ClientApp()


@dataclass
class ClientSide:
    """What one client computes with: its data, the server-test views, and the method."""

    cfg: Any
    data: ClientData
    method: Method
    server_view: Tensors  # no rows for site-local data: the site holds none of the server's test set
    server_tests: dict[str, Tensors] | None  # prepared on demand (see load_client)
    classes: list[str]  # the label names, declared to the server


_CACHE: dict[tuple[str, str, int], ClientSide] = {}


def client_id(node_config: dict[str, Any]) -> int:
    """The scenario client this SuperNode plays (``client-id``, else ``partition-id``)."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise AdamodalError("the SuperNode has no client-id in its node config "
                        "(start it with `adamodal flower supernode --client-id I`)")


def load_client(config_text: str, cid: int, data_path: str, cache_file: Path | None = None) -> ClientSide:
    """Prepare client ``cid`` exactly as the simulator would (same config, same seeds).

    In a deployment every message starts a fresh ClientApp process, so the prepared tensors
    are also kept in ``cache_file`` (one per run and node, in this user's private folder in the
    temp folder; tensors and plain containers only) and loaded from there by the run's later
    messages instead of being prepared again."""
    key = (config_text, data_path, cid)
    if key in _CACHE:
        return _CACHE[key]
    from adamodal.config import resolve
    from adamodal.methods import get_method_class

    cfg = resolve(tomllib.loads(config_text))
    if data_path and not is_site_local(cfg):
        # built-in data sets: the data path is this site's adamodal data cache
        os.environ["ADAMODAL_CACHE"] = data_path
    saved = _read_cache(cache_file, key)
    if saved is None:
        prepared = _prepare(cfg, cid, data_path)
        saved = prepared
        # the server's whole test set is needed only at the last round of methods without a
        # server model: it is not cached (it would be most of the file)
        _write_cache(cache_file, key, prepared[:4] + (None,) + prepared[5:])
    elif int(cfg["threads"]) > 0:
        torch.set_num_threads(int(cfg["threads"]))  # what prepare() does
    data, spec, infos, server_view, server_tests, classes = saved
    method = get_method_class(cfg["method"])(cfg, spec, infos)
    side = ClientSide(cfg, data, method, server_view, server_tests, list(classes))
    _CACHE.clear()  # one client per process at a time: memory O(one client)
    _CACHE[key] = side
    return side


def _prepare(cfg: Any, cid: int, data_path: str) -> tuple:
    """``(client data, model spec, client infos, server test view, server tests, label names)``.

    Site-local data: this site's folder only; the method knows this client alone and there is
    no server test set on the site. Built-in data sets, and site-local ones in a simulation
    (virtual SuperNodes have no ``--data``; ``<dataset>.root`` holds every client): the
    simulator's whole experiment, of which this site keeps its client."""
    from adamodal.runtime.simulator import prepare
    from adamodal.runtime.sites import empty_view, prepare_site

    if is_site_local(cfg) and data_path:
        site = prepare_site(cfg, cid, data_path)
        return (site.data, site.spec, [site.declaration.info()], empty_view(site.spec), None,
                list(site.declaration.classes))
    exp = prepare(cfg, progress=False)
    by_cid = {c.cid: c for c in exp.clients}
    if cid not in by_cid:
        raise AdamodalError(f"client-id {cid} is not in the scenario (clients 0..{len(exp.clients) - 1})")
    assert exp.bundle is not None
    return by_cid[cid], exp.spec, exp.infos(), exp.test_as_client[cid], exp.test, list(exp.bundle.classes)


def _cache_folder() -> Path | None:
    """The folder for the per-run cache files: in the temp folder, this user's own (created
    0700, and checked to be a real folder owned by us and closed to others), or ``None`` (no
    file cache: every message prepares the data again) when it is not."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / (f"adamodal-flower-{uid}" if uid is not None else "adamodal-flower")
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError as e:
        _log.warning("adamodal: no ClientApp cache file (cannot create %s: %s)", folder, e)
        return None
    if uid is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077):
        _log.warning("adamodal: no ClientApp cache file: %s is not a folder private to this user "
                     "(owner %d, mode %o); remove it to get the cache back", folder, st.st_uid,
                     stat.S_IMODE(st.st_mode))
        return None
    return folder


# The cache file holds only tensors and plain containers (loaded with ``weights_only=True``, so
# a planted file cannot run code); these dataclasses are stored as dicts tagged with their name.
_KINDS = {c.__name__: c for c in (ClientData, Tensors, ModelSpec, ClientInfo)}
_KIND = "__kind__"


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if type(x).__name__ not in _KINDS:
            raise TypeError(f"the ClientApp cache cannot store a {type(x).__name__}")
        return {_KIND: type(x).__name__, **{f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if type(x) in (list, tuple):
        return type(x)(_plain(v) for v in x)
    if type(x) is dict:
        return {k: _plain(v) for k, v in x.items()}
    if x is None or isinstance(x, (torch.Tensor, str, int, float, bool)):
        return x
    raise TypeError(f"the ClientApp cache cannot store a {type(x).__name__}")


def _unplain(x: Any) -> Any:
    if type(x) in (list, tuple):
        return type(x)(_unplain(v) for v in x)
    if type(x) is dict:
        fields = {k: _unplain(v) for k, v in x.items() if k != _KIND}
        return _KINDS[x[_KIND]](**fields) if _KIND in x else fields
    return x


def _read_cache(path: Path | None, key: tuple) -> tuple | None:
    if path is None or not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("key") != key:
            return None
        return _unplain(payload["value"])
    except Exception:  # noqa: BLE001 - a torn, stale or foreign file is just a cache miss
        return None


def _write_cache(path: Path | None, key: tuple, value: tuple) -> None:
    if path is None:
        return
    payload = {"key": key, "value": _plain(value)}
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.pt"):  # runs long finished
        if time.time() - old.stat().st_mtime > 3 * 3600:
            old.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _side(context: Context) -> ClientSide:
    folder = _cache_folder()
    cache = None if folder is None else folder / f"run{context.run_id}-node{context.node_id}.pt"
    data_path = str(context.node_config.get("data-path", ""))
    if not data_path and "client-id" in context.node_config:  # a deployed site, not a simulated one
        cfg = tomllib.loads(str(context.run_config[CONFIG_KEY]))  # resolved already: names the dataset
        if is_site_local(cfg):
            raise no_data_folder(cfg)
    return load_client(str(context.run_config[CONFIG_KEY]), client_id(context.node_config), data_path, cache)


def _state_dir(side: ClientSide, context: Context) -> Path:
    """Where this site keeps its client state between runs: its own disk (the data cache),
    keyed by the run's config and run folder, so ``--resume`` finds it after a crash."""
    from adamodal.cache import cache_dir, content_hash

    key = content_hash(str(context.run_config[CONFIG_KEY]), str(context.run_config.get("out-dir", "")))
    root = Path(str(context.node_config["state-path"])) if "state-path" in context.node_config else cache_dir() / "flower-state"
    return root / f"{key}-client{side.data.cid}"


def _restore(folder: Path, upto: int) -> dict[str, np.ndarray]:
    """The state after the last round <= ``upto`` this client took part in ({} if none)."""
    rounds = sorted(int(p.stem[5:]) for p in folder.glob("round*.pt") if p.stem[5:].isdigit())
    rounds = [r for r in rounds if r <= upto]
    if not rounds:
        return {}
    saved = torch.load(folder / f"round{rounds[-1]}.pt", weights_only=True)
    return {k: v.numpy() for k, v in saved.items()}


def _persist(folder: Path, rnd: int, state: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"round{rnd}.pt.tmp"
    torch.save({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()}, tmp)
    os.replace(tmp, folder / f"round{rnd}.pt")
    for old in folder.glob("round*.pt"):  # the last few rounds are enough to resume
        if old.stem[5:].isdigit() and int(old.stem[5:]) < rnd - 2:
            old.unlink(missing_ok=True)


def _context(side: ClientSide, context: Context, seed: int, resume_upto: int) -> ClientContext:
    """The client's context; its state from Flower's ``context.state`` or, in the first message
    of a resumed run, from the state this site saved in the run it continues."""
    d = side.data
    if STATE_KEY in context.state.array_records:
        state = {k: a.numpy() for k, a in context.state.array_records[STATE_KEY].items()}
    elif context.run_config.get("resume", False):
        state = _restore(_state_dir(side, context), resume_upto)
    else:
        state = {}
    return ClientContext(cid=d.cid, group=d.group, modalities=d.modalities, train=d.train, val=d.val,
                         test=d.test, spec=side.method.spec, cfg=side.cfg, seed=seed,
                         device=side.method.device, state=state)


def _save_state(side: ClientSide, ctx: ClientContext, context: Context, rnd: int) -> None:
    context.state[STATE_KEY] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in ctx.state.items()})
    _persist(_state_dir(side, context), rnd, ctx.state)


@app.query()
def describe(msg: FlowerMessage, context: Context) -> FlowerMessage:
    """Tell the server which client this SuperNode is (and check its data loads): its group,
    modalities, training-set size and label names, all a site-local server learns of it."""
    side = _side(context)
    d = side.data
    return FlowerMessage(RecordDict({"client": ConfigRecord({
        "cid": d.cid, "group": d.group, "num_train": len(d.train), "modalities": ",".join(d.modalities),
        "task": side.method.spec.task, "classes": list(side.classes),
    })}), reply_to=msg)


@app.train()
def train(msg: FlowerMessage, context: Context) -> FlowerMessage:
    """One phase of one round: the engine's :func:`client_step` with the in-process seed."""
    side = _side(context)
    ctl = control_of(msg.content)
    rnd, p_idx, phase = int(ctl["round"]), int(ctl["phase_index"]), str(ctl["phase"])
    ctx = _context(side, context, derive_seed(side.cfg["seed"], rnd, side.data.cid, p_idx), rnd - 1)
    reply = client_step(side.method, phase, rnd, ctx, from_records(msg.content))
    _save_state(side, ctx, context, rnd)
    return FlowerMessage(to_records(reply), reply_to=msg)


@app.evaluate()
def evaluate(msg: FlowerMessage, context: Context) -> FlowerMessage:
    """Score this client's model on its test split and on the server test view."""
    side = _side(context)
    ctl = control_of(msg.content)
    ctx = _context(side, context, 0, int(ctl["round"]))
    data_path = str(context.node_config.get("data-path", ""))
    if ctl.get("server_tests") and side.server_tests is None and not (is_site_local(side.cfg) and data_path):
        side.server_tests = _prepare(side.cfg, side.data.cid, data_path)[4]  # a site-local site has none
    ev = evaluate_client(side.method, ctx, from_records(msg.content), side.server_view,
                         side.server_tests if ctl.get("server_tests") else None)
    return FlowerMessage(eval_to_records(ev), reply_to=msg)
