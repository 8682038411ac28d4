"""Site folders for site-local deployments, written by the tests: one client's ``images/``,
``texts/`` and ``labels.csv`` per site (generated pixels, short report-like texts), and a
server folder holding only ``test/``. The label is readable from both modalities (brighter
images and abnormal findings for ``abnormal``), so a couple of rounds already learn it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.data.conftest import write_png

NORMAL = ["lungs are clear", "no acute disease", "heart size is normal", "no effusion", "unremarkable chest"]
ABNORMAL = ["right lower lobe opacity", "large pleural effusion", "focal consolidation", "cardiomegaly",
            "pneumothorax on the left"]
#: the consortium of the walkthrough: site 0 image+text, site 1 images only, site 2 texts only
KINDS = (("images", "texts"), ("images",), ("texts",))


def write_site(folder: Path, n: int, mods: tuple[str, ...], seed: int,
               labels: tuple[str, ...] = ("abnormal", "normal")) -> Path:
    """``n`` rows of one client (two rows per patient), labels cycling through ``labels``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        label = labels[k % len(labels)]
        sid = f"r{seed}{k:03d}"
        if "images" in mods:
            write_png(folder / "images" / f"{sid}.png", seed=seed * 1000 + k, bright=label != "normal", size=24)
        if "texts" in mods:
            words = NORMAL if label == "normal" else ABNORMAL
            text = ". ".join(rng.choice(words, size=2, replace=False))
            (folder / "texts").mkdir(parents=True, exist_ok=True)
            (folder / "texts" / f"{sid}.txt").write_text(f"FINDINGS: {text}.\nIMPRESSION: {label}.\n", encoding="utf-8")
        rows.append({"id": sid, "patient": f"p{seed}-{k // 2}", "label": label})
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "patient", "label"])
        w.writeheader()
        w.writerows(rows)
    return folder


def write_consortium(root: Path, n: int = 30, n_test: int = 24, test: bool = True) -> tuple[list[Path], Path]:
    """``root/sites/siteK/`` for the three sites of :data:`KINDS` (each folder is all a site
    gets) and ``root/server/`` with only ``test/`` (image+text rows) or nothing."""
    sites = [write_site(root / "sites" / f"site{k}", n, mods, seed=k + 1) for k, mods in enumerate(KINDS)]
    server = root / "server"
    server.mkdir(parents=True)
    if test:
        write_site(server / "test", n_test, ("images", "texts"), seed=99)
    return sites, server


#: a quick run on these folders: frozen towers (features computed once per site), a narrow model
SITE_RUN = {"dataset": "folder", "towers": "frozen", "model.dim": 32, "rounds": 2, "local_epochs": 2,
            "device": "cpu", "seed": 0, "split.val": 0.1, "split.test": 0.2}


def site_grid(run_config: dict, sites: list[Path], state: Path, dies: dict[int, int] | None = None):
    """A :class:`~tests.flower.loopback.LoopbackGrid` whose node ``1000 + k`` is client ``k``
    reading only ``sites[k]`` (its ``--data``)."""
    from tests.flower.loopback import LoopbackGrid

    grid = LoopbackGrid(run_config, len(sites), state, dies)
    for k, site in enumerate(sites):
        grid.contexts[1000 + k].node_config["data-path"] = str(site)
    return grid


def warm_caches(pairs: list[tuple[Path, Path]]) -> None:
    """For each ``(folder, cache)``: decode the folder's images and compute its frozen-tower
    features into that cache, as the process that reads the folder would on its first message.
    The towers load once, here, instead of once in every site's process on a busy machine."""
    from adamodal.data import get_source
    from adamodal.towers.features import build_inputs

    for folder, cache in pairs:
        bundle = get_source("folder", {"root": str(folder), "layout": "site"}).load(cache)
        build_inputs(bundle, "frozen", cache, progress=False)
