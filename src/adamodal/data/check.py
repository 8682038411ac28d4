"""``adamodal data check PATH|NAME``: validate a data set or a data folder before training.

A folder's layout is recognised from what it holds (``client_XX/`` folders, MIMIC-CXR-JPG's
``files/`` and label CSVs, IU X-ray's ``annotation.json`` or report XMLs). The loader scans it
exactly as training would; every problem (missing file, unreadable image, empty report, label
row with no image or report, patient in two clients or splits...) is one ``path: reason``
line, and a clean data set gets a summary: counts per client, modality and label.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from adamodal.data import dataset_names, get_source
from adamodal.data._medical import MedicalSource, Problems
from adamodal.data.base import Bundle
from adamodal.errors import DataError

#: folder layouts ``data check`` recognises, tried in this order
LAYOUTS = ("folder", "mimic_cxr", "iu_xray")


def detect_layout(path: Path) -> str:
    """Which loader reads the folder ``path``; DataError when none fits."""
    from adamodal.data.folder import client_folders
    from adamodal.data.iu_xray import ANNOTATION
    from adamodal.data.mimic_cxr import LABEL_FILES, find_csv

    if client_folders(path) or (path / "labels.csv").is_file():  # all sites, or one site's folder
        return "folder"
    if (path / "files").is_dir() or any(find_csv(path, f) for f in LABEL_FILES.values()):
        return "mimic_cxr"
    if (path / ANNOTATION).is_file() or next(path.rglob("*.xml"), None) is not None:
        return "iu_xray"
    raise DataError(
        f"{path}: not a known layout: expected client_XX/ folders or one site's labels.csv (folder), files/ and "
        f"mimic-cxr-2.0.0-*.csv (mimic_cxr), or {ANNOTATION} / report XMLs (iu_xray)"
    )


def check(target: str, options_for: Mapping[str, Mapping[str, object]], cache: Path
          ) -> tuple[str, Bundle | None, Problems]:
    """Check a folder or a named data set. ``options_for[name]`` are the configured options of
    each data set (a folder's path becomes its ``root``). Config mistakes still raise."""
    path = Path(target).expanduser()
    if target not in dataset_names() and path.is_dir():
        name = detect_layout(path)
        options = {**options_for.get(name, {}), "root": str(path)}
        if name == "folder" and (path / "labels.csv").is_file():
            options["layout"] = "site"  # one site's own folder (a deployment's --data)
    elif target in dataset_names():
        name, options = target, dict(options_for.get(target, {}))
    else:
        raise DataError(f"{target}: neither a folder nor a data set name "
                        f"(data sets: {', '.join(dataset_names())})")
    source = get_source(name, dict(options))
    if isinstance(source, MedicalSource):
        bundle, problems = source.check(cache)
        return name, bundle, problems
    problems = Problems()
    try:
        return name, source.load(cache), problems
    except DataError as exc:
        for line in str(exc).splitlines():
            path_part, _, reason = line.partition(": ")
            problems.add(path_part, reason or "error")
        return name, None, problems


def _owner_names(bundle: Bundle) -> list[str]:
    """A row label per item: its predefined client, ``test``, or ``all`` (to be partitioned)."""
    names = np.array(["all"] * len(bundle), dtype=object)
    if bundle.clients is not None and bundle.client_names:
        for cid, cname in enumerate(bundle.client_names):
            names[bundle.clients == cid] = cname
    if bundle.fixed_test is not None:
        names[bundle.fixed_test] = "test"
    return list(names)


def client_rows(bundle: Bundle) -> tuple[list[str], list[list[str]]]:
    """Per client (or pool / test set): samples per modality pairing and patients."""
    owners = np.array(_owner_names(bundle), dtype=object)
    img, txt = bundle.image_mask(), bundle.text_mask()
    header = ["client", "modalities", "samples", "image+text", "image only", "text only", "patients"]
    rows = []
    order = list(dict.fromkeys(o for o in owners if o != "test")) + (["test"] if "test" in owners else [])
    for owner in order:
        sel = owners == owner
        both, only_i, only_t = (sel & img & txt).sum(), (sel & img & ~txt).sum(), (sel & ~img & txt).sum()
        mods = "+".join(m for m, ok in (("image", (sel & img).any()), ("text", (sel & txt).any())) if ok)
        rows.append([str(owner), mods, str(int(sel.sum())), str(int(both)), str(int(only_i)),
                     str(int(only_t)), str(len(np.unique(bundle.groups[sel])))])
    return header, rows


def label_rows(bundle: Bundle) -> tuple[list[str], list[list[str]]]:
    """Per class: samples (multi-class) or positives / unknown entries (multi-label)."""
    if bundle.task == "multilabel":
        lab = np.asarray(bundle.labels, dtype=np.float32)
        unknown = np.isnan(lab)
        pos = np.nan_to_num(lab, nan=0.0).sum(axis=0)
        header = ["finding", "positive", "negative", "unknown (ignored)"]
        rows = [[c, str(int(pos[j])), str(int((~unknown[:, j]).sum() - pos[j])), str(int(unknown[:, j].sum()))]
                for j, c in enumerate(bundle.classes)]
        return header, rows
    counts = np.bincount(bundle.labels.astype(np.int64), minlength=bundle.num_classes)
    return ["class", "samples"], [[c, str(int(counts[j]))] for j, c in enumerate(bundle.classes)]
