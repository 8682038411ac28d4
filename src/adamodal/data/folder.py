"""Your own data, one folder per site: ``ROOT/client_XX/{images/, texts/, labels.csv}``.

::

    ROOT/
      client_01/            a site with X-rays and reports (image+text client)
        images/<id>.png     .png, .jpg or .jpeg; greyscale or colour (read as greyscale)
        texts/<id>.txt      the report; FINDINGS/IMPRESSION kept when such headers exist
        labels.csv          one row per sample: id, then a ``label`` column (multi-class)
                            or one 0/1/-1/blank column per finding (multi-label)
      client_02/            no texts/ folder: an image-only client
      client_03/            no images/ folder: a text-only client
      test/                 optional: a global test set in the same layout

``labels.csv`` may also have ``patient`` (or ``subject_id``; without it each sample is its own
patient), and ``image`` / ``text`` columns naming the files when they are not ``<id>.*``.
Sites define the clients: the scenario keeps each folder as one client (``folder.clients =
partition`` pools them and partitions as for any other data set instead).

``folder.layout = site`` reads ROOT as *one* client's folder (``ROOT/{images/, texts/,
labels.csv}``): what a site holds in a deployment, where it never sees the other sites'
folders, and the layout of the server's ``test/`` folder there (see
:mod:`adamodal.runtime.sites`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

from adamodal.data._medical import (
    IMAGE_SUFFIXES,
    UNCERTAIN_POLICIES,
    MedicalSource,
    Problems,
    Sample,
    Scan,
    choice_option,
    read_report,
    root_option,
    uncertain_value,
)

RESERVED = ("id", "patient", "subject_id", "image", "text", "label")
TEST_FOLDER = "test"


def client_folders(root: Path) -> list[Path]:
    """``client_*`` sub-folders, sorted by name (``test`` is the global test set, not a client)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("client_"))


def _read_csv(path: Path, problems: Problems) -> tuple[list[str], list[dict[str, str]]] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.add(path, f"unreadable labels file ({exc})")
        return None
    rows = [{(k or "").strip(): (v or "") for k, v in row.items()} for row in rows]
    if "id" not in header:
        problems.add(path, f"no 'id' column (columns: {', '.join(header) or 'none'})")
        return None
    return header, rows


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            found.setdefault(p.stem, p)
    return found


class FolderSource(MedicalSource):
    """Per-site folders of X-rays, reports and labels; each folder is one client."""

    name: ClassVar[str] = "folder"
    modalities = ("image", "text")
    task = "multiclass"
    description: ClassVar[str] = (
        "your own data: ROOT/client_XX/{images/,texts/,labels.csv}, one folder per client"
    )
    options_defaults: ClassVar[dict[str, object]] = {
        "root": "", "uncertain": "zeros", "size": 64, "clients": "folders", "layout": "clients",
    }
    #: in a Flower deployment each site reads only its own client's folder
    site_local: ClassVar[bool] = True

    def fetch(self, cache: Path) -> Path:
        """Nothing to download: the data is yours; returns ``folder.root`` once checked."""
        return root_option(self.options, self.name, "a folder of client_XX sub-folders")

    def scan(self, cache: Path, problems: Problems) -> Scan:
        root = root_option(self.options, self.name, "a folder of client_XX sub-folders")
        policy = choice_option(self.options, self.name, "uncertain", "zeros", UNCERTAIN_POLICIES)
        mode = choice_option(self.options, self.name, "clients", "folders", ("folders", "partition"))
        layout = choice_option(self.options, self.name, "layout", "clients", ("clients", "site"))
        if layout == "site":  # ROOT is one client's folder: its items belong to no named client
            folders, owner = [root], {root: None}
        else:
            folders = client_folders(root)
            if not folders:
                problems.add(root, "no client_XX sub-folders (expected ROOT/client_XX/{images/,texts/,labels.csv})")
                return Scan([], "multiclass", [])
            if (root / TEST_FOLDER).is_dir():
                folders.append(root / TEST_FOLDER)
            owner = {f: (f.name if f.name != TEST_FOLDER else None) for f in folders}
        header_ref: tuple[Path, list[str]] | None = None
        raw: list[tuple[Sample, dict[str, str]]] = []
        unlabelled: list[Sample] = []  # rows whose labels cannot be read: their files are still checked
        for folder in folders:
            scanned = self._scan_client(folder, problems, owner[folder], test=layout == "clients" and owner[folder] is None)
            if scanned is None:
                unlabelled.extend(self._client_files(folder, problems))
                continue
            header, rows = scanned
            cols = ["label"] if "label" in header else [h for h in header if h not in RESERVED]
            if header_ref is None:
                header_ref = (folder / "labels.csv", cols)
            elif cols != header_ref[1]:
                problems.add(folder / "labels.csv", f"label columns {cols} differ from "
                             f"{header_ref[0]}'s {header_ref[1]}")
                unlabelled.extend(sample for sample, _ in rows)
                continue
            raw.extend(rows)
        if header_ref is None:
            return Scan(unlabelled, "multiclass", [])
        cols = header_ref[1]
        samples: list[Sample] = []
        if cols == ["label"]:
            task = "multiclass"
            classes = sorted({row.get("label", "").strip() for _, row in raw} - {""})
            for sample, row in raw:
                value = row.get("label", "").strip()
                if not value:
                    problems.add(sample.source, "empty label")
                sample.label = value
                samples.append(sample)
        else:
            task = "multilabel"
            classes = list(cols)
            if not classes:
                problems.add(header_ref[0], "no label column: add 'label' (multi-class) or one column per finding")
            for sample, row in raw:
                try:
                    sample.label = [uncertain_value(row.get(c, ""), policy) for c in classes]
                except ValueError as exc:
                    problems.add(sample.source, f"bad label value: {exc}")
                samples.append(sample)
        samples.extend(unlabelled)
        if mode == "partition":
            for s in samples:
                s.client = None
        return Scan(samples, task, classes,  # type: ignore[arg-type]
                    {"root": str(root), "clients": mode, "layout": layout,
                     "uncertain": policy if task == "multilabel" else "-"})

    def _scan_client(
        self, folder: Path, problems: Problems, client: str | None, test: bool
    ) -> tuple[list[str], list[tuple[Sample, dict[str, str]]]] | None:
        """The labels.csv header and ``(sample, row)`` for each usable row of one client
        (``client``: the name its items are owned by; ``test``: a global test folder)."""
        labels = folder / "labels.csv"
        if not labels.is_file():
            problems.add(labels, "missing file (every client folder needs a labels.csv)")
            return None
        img_dir, txt_dir = folder / "images", folder / "texts"
        if not img_dir.is_dir() and not txt_dir.is_dir():
            problems.add(folder, "neither images/ nor texts/: the client has no modality")
            return None
        parsed = _read_csv(labels, problems)
        if parsed is None:
            return None
        header, rows = parsed
        out: list[tuple[Sample, dict[str, str]]] = []
        images = _files_by_stem(img_dir, IMAGE_SUFFIXES) if img_dir.is_dir() else {}
        texts = _files_by_stem(txt_dir, (".txt",)) if txt_dir.is_dir() else {}
        used_img: set[Path] = set()
        used_txt: set[Path] = set()
        seen: set[str] = set()
        patient_col = "patient" if "patient" in header else ("subject_id" if "subject_id" in header else None)
        for lineno, row in enumerate(rows, start=2):
            where = f"{labels}:{lineno}"
            sid = row.get("id", "").strip()
            if not sid:
                problems.add(where, "empty id")
                continue
            if sid in seen:
                problems.add(where, f"duplicate id {sid}")
                continue
            seen.add(sid)
            image = self._named(row.get("image", "").strip(), img_dir, images.get(sid), where, problems)
            tpath = self._named(row.get("text", "").strip(), txt_dir, texts.get(sid), where, problems)
            if isinstance(image, Path):
                used_img.add(image)
            if isinstance(tpath, Path):
                used_txt.add(tpath)
            text = read_report(tpath, problems) if isinstance(tpath, Path) else None
            if image is None and tpath is None:
                problems.add(where, f"label row {sid} has no image or report")
            patient = row.get(patient_col, "").strip() if patient_col else ""
            sample = Sample(
                id=sid, patient=patient or f"{folder.name}/{sid}", label="",
                image=image if isinstance(image, Path) else None, text=text, source=where,
                client=client, test=test,
            )
            out.append((sample, row))
        for path in sorted(set(images.values()) - used_img):
            problems.add(path, "no row in labels.csv")
        for path in sorted(set(texts.values()) - used_txt):
            problems.add(path, "no row in labels.csv")
        return header, out

    @staticmethod
    def _client_files(folder: Path, problems: Problems) -> list[Sample]:
        """A client whose labels cannot be read still has its files checked: each image (decoded
        with the rest) and each report, as unlabelled samples (there are problems already)."""
        img_dir, txt_dir = folder / "images", folder / "texts"
        images = _files_by_stem(img_dir, IMAGE_SUFFIXES) if img_dir.is_dir() else {}
        texts = _files_by_stem(txt_dir, (".txt",)) if txt_dir.is_dir() else {}
        out = []
        for stem in sorted(set(images) | set(texts)):
            text = read_report(texts[stem], problems) if stem in texts else None
            out.append(Sample(id=stem, patient=f"{folder.name}/{stem}", label="", image=images.get(stem),
                              text=text, source=str(images.get(stem) or texts[stem])))
        return out

    @staticmethod
    def _named(name: str, folder: Path, by_stem: Path | None, where: str,
               problems: Problems) -> Path | None | bool:
        """The file a row names (``False`` if named but missing), else the one found by id."""
        if not name:
            return by_stem
        path = folder / name
        if not path.is_file():
            problems.add(path, f"missing file (named in {where})")
            return False
        return path


SOURCE = FolderSource

__all__ = ["SOURCE", "FolderSource", "client_folders"]
