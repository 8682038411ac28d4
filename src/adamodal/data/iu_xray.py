"""IU X-ray (Indiana University / Open-i) images and reports, in either common layout.

(a) the report-generation layout (R2Gen and its followers)::

    ROOT/annotation.json        {"train": [{"id": "CXR2384_IM-0942", "report": "...",
                                 "image_path": ["CXR2384_IM-0942/0.png", ...], "split": "train"}],
                                 "val": [...], "test": [...]}
    ROOT/images/CXR2384_IM-0942/0.png

(b) the NLMCXR release: report XMLs (``ecgen-radiology/*.xml``) and PNGs named by the XMLs'
``parentImage`` ids (``NLMCXR_png/CXR1_1_IM-0001-3001.png``), anywhere under ROOT.

One item per image with its study's report (FINDINGS + IMPRESSION; the annotation's report in
layout a). Labels come from the study's MeSH major terms (``iu_xray.label``: ``normal`` =
normal/abnormal, ``findings`` = the 14 CheXpert observations, see :mod:`adamodal.data._iu`).
Layout (a) has no MeSH terms, so they are read from the report XMLs in ``iu_xray.reports``,
in ROOT, or else from the 3,955 reports in the ``torchxrayvision`` wheel. The study is the
identity group (IU has no patient ids); layout (a)'s ``test`` split is the global test set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from adamodal.data import _iu
from adamodal.data._medical import (
    CHEXPERT_FINDINGS,
    LABEL_KINDS,
    NORMAL_CLASSES,
    MedicalSource,
    Problems,
    Sample,
    Scan,
    choice_option,
    root_option,
)
from adamodal.errors import DataError

ANNOTATION = "annotation.json"


def _label(report: _iu.IUReport, kind: str) -> list[float] | str:
    if kind == "findings":
        return report.finding_vector()
    return "normal" if report.normal else "abnormal"


class IUXraySource(MedicalSource):
    """IU X-ray: paired chest X-rays and reports, labels from MeSH terms."""

    name: ClassVar[str] = "iu_xray"
    modalities = ("image", "text")
    task = "multiclass"
    description: ClassVar[str] = (
        "IU X-ray (your copy): annotation.json + images/, or NLMCXR PNGs + report XMLs"
    )
    site_local: ClassVar[bool] = True
    options_defaults: ClassVar[dict[str, object]] = {
        "root": "", "label": "normal", "size": 64, "reports": "",
    }

    def fetch(self, cache: Path) -> Path:
        """The images are yours (Open-i); returns the checked root."""
        return root_option(self.options, self.name, "your IU X-ray folder")

    def _xml_reports(self, folder: Path, problems: Problems) -> list[_iu.IUReport]:
        out = []
        for path in sorted(folder.rglob("*.xml")):
            try:
                out.append(_iu.parse_report(path.read_bytes(), str(path)))
            except DataError as exc:
                problems.add(path, str(exc).split(": ", 1)[-1])
            except OSError as exc:
                problems.add(path, f"unreadable report XML ({exc})")
        return out

    def scan(self, cache: Path, problems: Problems) -> Scan:
        root = root_option(self.options, self.name, "your IU X-ray folder")
        kind = choice_option(self.options, self.name, "label", "normal", LABEL_KINDS)
        task = "multilabel" if kind == "findings" else "multiclass"
        classes = list(CHEXPERT_FINDINGS) if kind == "findings" else list(NORMAL_CLASSES)
        if (root / ANNOTATION).is_file():
            samples, meta = self._scan_annotation(root, cache, kind, problems)
        else:
            samples, meta = self._scan_nlmcxr(root, kind, problems)
        meta = {"root": str(root), "label": kind, **meta}
        return Scan(samples, task, classes, meta)  # type: ignore[arg-type]

    def _mesh_source(self, root: Path, cache: Path, problems: Problems) -> tuple[dict[str, _iu.IUReport], str]:
        extra = str(self.options.get("reports") or "").strip()
        if extra:
            folder = Path(extra).expanduser()
            if not folder.is_dir():
                raise DataError(f"{folder}: iu_xray.reports is not a folder")
            reports, where = self._xml_reports(folder, problems), str(folder)
        elif any(root.rglob("*.xml")):
            reports, where = self._xml_reports(root, problems), str(root)
        else:
            reports = [_iu.parse_report(raw, member) for member, raw in _iu.wheel_reports(cache)]
            where = f"PyPI {_iu.WHEEL}: {_iu.REPORTS_MEMBER}"
        return {r.uid: r for r in reports}, where

    def _scan_annotation(self, root: Path, cache: Path, kind: str,
                         problems: Problems) -> tuple[list[Sample], dict[str, object]]:
        path = root / ANNOTATION
        try:
            ann = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.add(path, f"unreadable annotation file ({exc})")
            return [], {}
        if not isinstance(ann, dict) or not all(isinstance(v, list) for v in ann.values()):
            problems.add(path, 'expected {"train": [...], "val": [...], "test": [...]}')
            return [], {}
        mesh, mesh_where = self._mesh_source(root, cache, problems)
        images_dir = root / "images"
        samples: list[Sample] = []
        for split, entries in ann.items():
            for k, entry in enumerate(entries):
                where = f"{path}:{split}[{k}]"
                if not isinstance(entry, dict) or not entry.get("id"):
                    problems.add(where, "entry without an id")
                    continue
                sid = str(entry["id"])
                uid = sid.split("_")[0]
                report = mesh.get(uid)
                if report is None:
                    problems.add(where, f"no report XML for study {uid} in {mesh_where} "
                                 "(its labels come from the XML's MeSH terms)")
                    continue
                text = " ".join(str(entry.get("report") or "").split())
                paths = [images_dir / str(p) for p in (entry.get("image_path") or [])]
                for p in paths:
                    if not p.is_file():
                        problems.add(p, f"missing file (listed in {where})")
                if not text and "report" in entry:
                    problems.add(where, "empty report")
                elif not paths and not text:
                    problems.add(where, f"label row {sid} has no image or report")
                    continue
                paths = [p for p in paths if p.is_file()]  # the others are problems already
                label = _label(report, kind)
                test = str(entry.get("split", split)) == "test"
                for p in paths:
                    samples.append(Sample(id=f"{sid}/{p.stem}", patient=uid, label=label, image=p,
                                          text=text or None, source=where, test=test))
                if not paths and text:
                    samples.append(Sample(id=sid, patient=uid, label=label, text=text,
                                          source=where, test=test))
        return samples, {"layout": f"{ANNOTATION} + images/", "labels_from": mesh_where}

    def _scan_nlmcxr(self, root: Path, kind: str,
                     problems: Problems) -> tuple[list[Sample], dict[str, object]]:
        reports = self._xml_reports(root, problems)
        if not reports and not problems:
            problems.add(root, f"neither {ANNOTATION} nor report XMLs: not an IU X-ray folder")
            return [], {}
        pngs = {p.stem: p for p in root.rglob("*.png")}
        samples: list[Sample] = []
        left_out = 0
        for report in reports:
            where = f"report {report.uid}"
            label = _label(report, kind)
            found = []
            for image_id in report.images:
                p = pngs.get(image_id)
                if p is None:
                    problems.add(root / f"{image_id}.png", f"missing file (listed in {where})")
                else:
                    found.append(p)
            if not found and report.images:
                continue  # its images are missing (problems already): nothing left to check
            if not found and not report.text:
                left_out += 1  # as published: a few reports have neither section nor image
                continue
            for p in found:
                samples.append(Sample(id=p.stem, patient=report.uid, label=label, image=p,
                                      text=report.text or None, source=str(p)))
            if not found:
                samples.append(Sample(id=report.uid, patient=report.uid, label=label,
                                      text=report.text, source=where))
        listed = {image_id for r in reports for image_id in r.images}
        for stem in sorted(set(pngs) - listed):
            problems.add(pngs[stem], "no report XML lists this image")
        return samples, {"layout": "NLMCXR report XMLs + PNGs",
                         "left_out": f"{left_out} reports with neither text nor image"}


SOURCE = IUXraySource

__all__ = ["SOURCE", "IUXraySource"]
