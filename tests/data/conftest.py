"""Small chest X-ray trees written by the tests: real IU report text, generated pixels, CSVs in
the real column formats. Medical tests run against a private cache (only the torchxrayvision
wheel is shared with the real one), so decoded images and features never pile up there."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adamodal.cache import cache_dir
from adamodal.data import _iu
from adamodal.data._medical import CHEXPERT_FINDINGS

MIMIC_COLUMNS = ["subject_id", "study_id", *CHEXPERT_FINDINGS]


@pytest.fixture(scope="session")
def iu_reports() -> list[tuple[str, bytes, _iu.IUReport]]:
    """Every real report of the wheel: (member name, raw XML, parsed)."""
    return [(m, raw, _iu.parse_report(raw, m)) for m, raw in _iu.wheel_reports(cache_dir())]


@pytest.fixture(scope="session")
def _shared_wheel_dir() -> Path:
    _iu.wheel_path(cache_dir())
    return cache_dir() / _iu.CACHE_SUBDIR


@pytest.fixture
def med_cache(tmp_path_factory, monkeypatch, _shared_wheel_dir) -> Path:
    """A fresh cache root (``ADAMODAL_CACHE``) that sees the already downloaded wheel."""
    root = tmp_path_factory.mktemp("cache")
    (root / _iu.CACHE_SUBDIR).symlink_to(_shared_wheel_dir, target_is_directory=True)
    monkeypatch.setenv("ADAMODAL_CACHE", str(root))
    return root


def write_png(path: Path, seed: int, bright: bool = False, size: int = 40, mode: str = "L") -> Path:
    """A generated 'X-ray': noise over a vertical gradient, brighter when ``bright``."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 160, size)[:, None] + (60 if bright else 0)
    arr = np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, "L")
    if mode != "L":
        img = img.convert(mode)
    img.save(path)
    return path


def pick(reports, n: int, normal: bool | None = None) -> list[_iu.IUReport]:
    """The first ``n`` reports with text (and the given normal flag), in wheel order."""
    out = [r for _, _, r in reports if r.text and (normal is None or r.normal == normal)]
    return out[:n]


@pytest.fixture
def folder_tree(tmp_path, iu_reports) -> Callable[..., Path]:
    """``make(n_per_client=12)`` writes ROOT with client_01 (image+text), client_02 (image
    only), client_03 (text only); labels normal/abnormal from the real reports' MeSH terms."""

    def make(n: int = 12, root: Path | None = None) -> Path:
        root = root or tmp_path / "clients"
        reps = pick(iu_reports, 3 * n // 2, True) + pick(iu_reports, 3 * n // 2, False)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(reps))
        reps = [reps[i] for i in order]
        kinds = {"client_01": ("images", "texts"), "client_02": ("images",), "client_03": ("texts",)}
        for c, (cname, mods) in enumerate(kinds.items()):
            folder = root / cname
            folder.mkdir(parents=True)
            rows = []
            for k in range(n):
                r = reps[c * n + k]
                sid = f"s{c}{k:03d}"
                label = "normal" if r.normal else "abnormal"
                if "images" in mods:
                    write_png(folder / "images" / f"{sid}.png", seed=c * 1000 + k, bright=not r.normal)
                if "texts" in mods:
                    (folder / "texts").mkdir(exist_ok=True)
                    (folder / "texts" / f"{sid}.txt").write_text(
                        f"FINDINGS: {r.findings}\nIMPRESSION: {r.impression}\n", encoding="utf-8")
                rows.append({"id": sid, "patient": f"{cname}-p{k // 2}", "label": label})
            with open(folder / "labels.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, ["id", "patient", "label"])
                w.writeheader()
                w.writerows(rows)
        return root

    return make


def mimic_report(r: _iu.IUReport) -> str:
    """A report in MIMIC-CXR's free-text format, made of a real IU report's sentences."""
    return (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ with cough\n\n"
        " COMPARISON:  None.\n\n"
        f" FINDINGS: \n \n {r.findings or 'See impression.'}\n \n"
        f" IMPRESSION: \n \n {r.impression or 'No acute process.'}\n"
    )


@pytest.fixture
def mimic_tree(tmp_path, iu_reports) -> Callable[..., Path]:
    """``make(patients=6, studies=2)``: files/pXX/pID/sID/*.jpg, sID.txt reports, the
    chexpert CSV (1.0/0.0/-1.0/blank) and the official split CSV (the last patient is test)."""

    def make(patients: int = 6, studies: int = 2, gz: bool = False) -> Path:
        root = tmp_path / "mimic"
        reps = pick(iu_reports, patients * studies)
        rng = np.random.default_rng(1)
        label_rows, split_rows = [], []
        for p in range(patients):
            subject = f"1{p:07d}"
            for s in range(studies):
                study = f"5{p:03d}{s:04d}"
                sdir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
                r = reps[p * studies + s]
                (sdir.parent / f"s{study}.txt").parent.mkdir(parents=True, exist_ok=True)
                (sdir.parent / f"s{study}.txt").write_text(mimic_report(r), encoding="utf-8")
                for k in range(2):
                    dicom = f"{p:02d}{s:02d}{k:02d}aa-bbcc"
                    path = sdir / f"{dicom}.jpg"
                    write_png(path.with_suffix(".png"), seed=p * 100 + s * 10 + k, size=96)
                    Image.open(path.with_suffix(".png")).save(path, "JPEG")
                    path.with_suffix(".png").unlink()
                    split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                                       "split": "test" if p == patients - 1 else ("validate" if p == 0 else "train")})
                vec = r.finding_vector()
                row = {"subject_id": subject, "study_id": study}
                for j, c in enumerate(CHEXPERT_FINDINGS):
                    if vec[j] == 1.0:
                        row[c] = "1.0"
                    else:
                        row[c] = rng.choice(["", "", "0.0", "-1.0"]) if c != "No Finding" else ""
                label_rows.append(row)
        _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", MIMIC_COLUMNS, label_rows, gz)
        _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                   split_rows, gz)
        return root

    return make


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]], gz: bool = False) -> None:
    import gzip
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt") as fh:
            fh.write(buf.getvalue())
    else:
        path.write_text(buf.getvalue())


@pytest.fixture
def iu_trees(tmp_path, iu_reports) -> dict[str, Callable[..., Path]]:
    """Builders of IU X-ray layout (a) (annotation.json + images/) and (b) (XMLs + PNGs),
    each with real report XMLs / texts and generated pixels."""
    chosen = [(m, raw, r) for m, raw, r in iu_reports if r.text and 1 <= len(r.images) <= 2][:10]

    def annotation() -> Path:
        root = tmp_path / "iu_a"
        ann: dict[str, list[dict[str, object]]] = {"train": [], "val": [], "test": []}
        for k, (_, _, r) in enumerate(chosen):
            sid = r.images[0].split("_", 1)[0] + "_" + r.images[0].split("_", 2)[-1].rsplit("-", 1)[0]
            split = "test" if k >= 8 else ("val" if k == 7 else "train")
            paths = []
            for j in range(len(r.images)):
                write_png(root / "images" / sid / f"{j}.png", seed=k * 10 + j, bright=not r.normal)
                paths.append(f"{sid}/{j}.png")
            ann[split].append({"id": sid, "report": r.text.lower(), "image_path": paths, "split": split})
        (root / "annotation.json").write_text(json.dumps(ann))
        return root

    def nlmcxr() -> Path:
        root = tmp_path / "iu_b"
        (root / "ecgen-radiology").mkdir(parents=True)
        for k, (m, raw, r) in enumerate(chosen):
            (root / "ecgen-radiology" / Path(m).name).write_bytes(raw)
            for image_id in r.images:
                write_png(root / "NLMCXR_png" / f"{image_id}.png", seed=k, bright=not r.normal, mode="RGB")
        return root

    return {"annotation": annotation, "nlmcxr": nlmcxr, "chosen": lambda: chosen}  # type: ignore[dict-item]
