"""MIMIC-CXR-JPG in its own layout (credentialed data: you download it, adamodal reads it).

::

    ROOT/
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-....jpg   one JPEG per DICOM
      files/p10/p10000032/s50414267.txt                         the study's report (optional;
                                                                from MIMIC-CXR's mimic-cxr-reports)
      mimic-cxr-2.0.0-chexpert.csv[.gz]     subject_id,study_id + 14 findings (1.0/0.0/-1.0/blank)
      mimic-cxr-2.0.0-negbio.csv[.gz]       the same columns from the NegBio labeller
      mimic-cxr-2.0.0-split.csv[.gz]        optional official split: dicom_id,study_id,subject_id,split

One item per image, with its study's report (FINDINGS + IMPRESSION) and labels; a study with a
report but no image is a text-only item. The patient (``subject_id``) is the identity group,
so a patient's studies always share one client and one split; the official ``test`` split
becomes the global test set. Options: ``labels`` (chexpert | negbio), ``uncertain`` (what
-1 becomes: zeros | ones | ignore), ``label`` (findings: 14-way multi-label | normal:
``No Finding`` vs the rest), ``size`` (pixels, decoded once and cached), ``reports`` (a
separate folder holding ``files/pXX/...txt``, default ``root``), ``iu_reports`` (add the 3,927
real IU X-ray reports as text-only items from another hospital; the scenario gives them to the
text-only clients, in the same 14-finding or normal/abnormal label space). Label rows of patients whose
folder is absent are skipped (a partial download), so a subset of MIMIC loads as it is.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import ClassVar

from adamodal.data import _iu
from adamodal.data._medical import (
    CHEXPERT_FINDINGS,
    LABEL_KINDS,
    NORMAL_CLASSES,
    UNCERTAIN_POLICIES,
    MedicalSource,
    Problems,
    Sample,
    Scan,
    choice_option,
    normal_label,
    read_report,
    root_option,
    uncertain_value,
)
from adamodal.errors import ConfigError

LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
SPLITS = ("train", "validate", "test")


def find_csv(root: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``root``."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_csv(path: Path, problems: Problems) -> tuple[list[str], list[dict[str, str]]] | None:
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = list(reader)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        problems.add(path, f"unreadable CSV ({exc})")
        return None
    return [h.strip() for h in (reader.fieldnames or [])], rows


def patient_dir(files: Path, subject: str) -> Path:
    """``files/p10/p10000032`` for subject ``10000032``."""
    return files / f"p{subject[:2]}" / f"p{subject}"


def _study_images(study_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in study_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    except OSError:
        return []


class MimicCxrSource(MedicalSource):
    """MIMIC-CXR-JPG images + reports, CheXpert/NegBio labels, patients as identity groups."""

    name: ClassVar[str] = "mimic_cxr"
    modalities = ("image", "text")
    task = "multilabel"
    description: ClassVar[str] = (
        "MIMIC-CXR-JPG (your copy): chest X-rays + reports, 14 CheXpert/NegBio findings"
    )
    site_local: ClassVar[bool] = True
    options_defaults: ClassVar[dict[str, object]] = {
        "root": "", "labels": "chexpert", "uncertain": "zeros", "label": "findings",
        "size": 64, "reports": "", "iu_reports": False,
    }

    def fetch(self, cache: Path) -> Path:
        """MIMIC is credentialed (PhysioNet): nothing to download; returns the checked root."""
        return root_option(self.options, self.name, "your MIMIC-CXR-JPG folder (with files/)")

    def scan(self, cache: Path, problems: Problems) -> Scan:
        root = root_option(self.options, self.name, "your MIMIC-CXR-JPG folder (with files/)")
        which = choice_option(self.options, self.name, "labels", "chexpert", tuple(LABEL_FILES))
        policy = choice_option(self.options, self.name, "uncertain", "zeros", UNCERTAIN_POLICIES)
        kind = choice_option(self.options, self.name, "label", "findings", LABEL_KINDS)
        reports_root = Path(str(self.options.get("reports") or root)).expanduser()
        files = root / "files"
        task = "multilabel" if kind == "findings" else "multiclass"
        classes = list(CHEXPERT_FINDINGS) if kind == "findings" else list(NORMAL_CLASSES)
        if not files.is_dir():
            problems.add(files, "missing folder (MIMIC-CXR-JPG keeps its images in files/pXX/pID/sID/)")
            return Scan([], task, classes)  # type: ignore[arg-type]
        labels_path = find_csv(root, LABEL_FILES[which])
        if labels_path is None:
            problems.add(root / LABEL_FILES[which], f"missing file (the {which} labels; "
                         "or set mimic_cxr.labels to the other labeller)")
            return Scan([], task, classes)  # type: ignore[arg-type]
        parsed = read_csv(labels_path, problems)
        if parsed is None:
            return Scan([], task, classes)  # type: ignore[arg-type]
        header, rows = parsed
        missing = [c for c in ("subject_id", "study_id", *CHEXPERT_FINDINGS) if c not in header]
        if missing:
            problems.add(labels_path, f"missing column(s) {', '.join(missing)}")
            return Scan([], task, classes)  # type: ignore[arg-type]
        split_of, split_rows = self._splits(root, problems)
        study_split = {study: split for _, _, study, dicom in split_rows if (split := split_of.get(dicom))}

        samples: list[Sample] = []
        skipped_patients: set[str] = set()
        for lineno, row in enumerate(rows, start=2):
            where = f"{labels_path}:{lineno}"
            subject, study = row["subject_id"].strip(), row["study_id"].strip()
            if not subject.isdigit() or not study.isdigit():
                problems.add(where, f"bad subject_id/study_id {subject!r}/{study!r}")
                continue
            pdir = patient_dir(files, subject)
            if not pdir.is_dir():
                skipped_patients.add(subject)
                continue
            label: list[float] | str = ""  # a bad row stays a sample: its files are still checked
            try:
                vector = [uncertain_value(row[c], policy) for c in CHEXPERT_FINDINGS]
                label = vector if kind == "findings" else normal_label(vector, CHEXPERT_FINDINGS)
            except ValueError as exc:
                problems.add(where, f"bad label value: {exc}")
            images = _study_images(pdir / f"s{study}")
            text = self._report(patient_dir(reports_root / "files", subject) / f"s{study}.txt", problems)
            if not images and text is None:
                problems.add(where, f"label row (study s{study}) has no image or report")
                continue
            for img in images:
                split = split_of.get(img.stem)
                samples.append(Sample(id=img.stem, patient=subject, label=label, image=img,
                                      text=text or None, source=str(img), test=split == "test"))
            if not images and isinstance(text, str):
                samples.append(Sample(id=f"s{study}", patient=subject, label=label, text=text,
                                      source=where, test=study_split.get(study) == "test"))
        self._check_split_files(files, split_rows, problems)
        extra = self.options.get("iu_reports", False)
        if not isinstance(extra, bool):
            raise ConfigError(f"mimic_cxr.iu_reports must be true or false, got {extra!r}")
        if extra:
            # another hospital's reports, text only: the scenario routes them to text-only clients
            iu, _ = _iu.report_samples(cache, kind, prefix="iu:")
            samples.extend(iu)
        meta = {
            "root": str(root), "labels": f"{labels_path.name} ({which})", "uncertain": policy,
            "label": kind, "official_split": "yes" if split_of else "no",
            "skipped": f"{len(skipped_patients)} labelled patients without a folder (partial copy)",
            "iu_reports": "3,927 IU X-ray reports added as text-only items" if extra else "no",
        }
        return Scan(samples, task, classes, meta)  # type: ignore[arg-type]

    @staticmethod
    def _splits(root: Path, problems: Problems) -> tuple[dict[str, str], list[tuple[str, str, str, str]]]:
        """dicom_id -> split from the official split CSV, and its rows as (where, subject,
        study, dicom); both empty when there is no split file."""
        path = find_csv(root, SPLIT_FILE)
        split_rows: list[tuple[str, str, str, str]] = []
        if path is None:
            return {}, split_rows
        parsed = read_csv(path, problems)
        if parsed is None:
            return {}, split_rows
        header, rows = parsed
        missing = [c for c in ("dicom_id", "study_id", "subject_id", "split") if c not in header]
        if missing:
            problems.add(path, f"missing column(s) {', '.join(missing)}")
            return {}, split_rows
        out: dict[str, str] = {}
        for lineno, row in enumerate(rows, start=2):
            split = row["split"].strip()
            if split not in SPLITS:
                problems.add(f"{path}:{lineno}", f"split {split!r} is not one of {', '.join(SPLITS)}")
                continue
            out[row["dicom_id"].strip()] = split
            split_rows.append((f"{path}:{lineno}", row["subject_id"].strip(),
                               row["study_id"].strip(), row["dicom_id"].strip()))
        return out, split_rows

    @staticmethod
    def _check_split_files(files: Path, split_rows: list[tuple[str, str, str, str]],
                           problems: Problems) -> None:
        """A DICOM the split lists inside a study folder that exists must be on disk."""
        for where, subject, study, dicom in split_rows:
            sdir = patient_dir(files, subject) / f"s{study}"
            if sdir.is_dir() and not any((sdir / f"{dicom}{ext}").is_file() for ext in (".jpg", ".jpeg", ".png")):
                problems.add(sdir / f"{dicom}.jpg", f"missing file (listed in {where})")

    @staticmethod
    def _report(path: Path, problems: Problems) -> str | None | bool:
        """The report's FINDINGS + IMPRESSION; None when there is no report, False when it is
        empty or unreadable (a problem)."""
        if not os.path.isfile(path):
            return None
        text = read_report(path, problems)
        return False if text is None else text


SOURCE = MimicCxrSource

__all__ = ["SOURCE", "MimicCxrSource", "patient_dir"]
