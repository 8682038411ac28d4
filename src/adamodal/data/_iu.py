"""Indiana University chest X-ray reports (NLMCXR / Open-i): XML parsing and MeSH labels.

Each report XML holds FINDINGS and IMPRESSION sections, the MeSH ``major`` terms a curator
indexed it with (``normal`` alone for a normal study, else terms such as
``Opacity/lung/base/left``), and the ids of its images (``parentImage id="CXR1_1_IM-0001-3001"``,
also the PNG file names). Labels are either normal/abnormal (``normal`` alone vs anything
else: 1,391 / 2,564 of the 3,955 reports) or the 14 CheXpert observations, mapped from the
head (and, for a few, the qualifiers) of each major term by :data:`MESH_TO_FINDING`, so IU
and MIMIC-CXR share one label space.

The 3,955 reports ship inside the ``torchxrayvision`` wheel (``data/NLMCXR_reports.tgz``);
the wheel is downloaded into the cache and read as a zip, never installed or imported.
"""

from __future__ import annotations

import io
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

from adamodal.data._medical import CHEXPERT_FINDINGS, Sample
from adamodal.data.fetch import pip_download_wheel
from adamodal.errors import DataError

WHEEL = "torchxrayvision==1.5.7"
CACHE_SUBDIR = "torchxrayvision"
REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
N_REPORTS = 3955

#: MeSH major-term head (text before the first ``/``, lower case) -> CheXpert observation
MESH_TO_FINDING: dict[str, str] = {
    "normal": "No Finding",
    "pulmonary atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "pulmonary congestion": "Edema",
    "fractures, bone": "Fracture",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "granuloma": "Lung Lesion",
    "calcified granuloma": "Lung Lesion",
    "granulomatous disease": "Lung Lesion",
    "opacity": "Lung Opacity",
    "density": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "surgical instruments": "Support Devices",
    "tube, inserted": "Support Devices",
    "medical device": "Support Devices",
    "stents": "Support Devices",
}


def findings_of_terms(terms: list[str]) -> set[str]:
    """CheXpert observations named by a report's MeSH major terms (see the module docstring).

    Besides the head table: ``Cardiac Shadow/enlarged`` is cardiomegaly, an enlarged, widened
    or prominent ``Mediastinum`` an enlarged cardiomediastinum, ``Thickening/pleura`` pleural other.
    """
    out: set[str] = set()
    for term in terms:
        parts = [p.strip().lower() for p in term.split("/")]
        head, rest = parts[0], set(parts[1:])
        if head in MESH_TO_FINDING:
            out.add(MESH_TO_FINDING[head])
        elif head == "cardiac shadow" and "enlarged" in rest:
            out.add("Cardiomegaly")
        elif head == "mediastinum" and rest & {"enlarged", "widened", "prominent"}:
            out.add("Enlarged Cardiomediastinum")
        elif head == "thickening" and "pleura" in rest:
            out.add("Pleural Other")
    if terms and any(t.strip().lower() != "normal" for t in terms):
        out.discard("No Finding")  # "normal" next to a real finding is not a normal study
    return out


@dataclass
class IUReport:
    """One parsed report XML."""

    uid: str  # "CXR1": the study id
    findings: str
    impression: str
    major: list[str]
    images: list[str]  # parentImage ids = PNG stems

    @property
    def text(self) -> str:
        return " ".join(p for p in (self.findings, self.impression) if p).strip()

    @property
    def normal(self) -> bool:
        return [t.strip().lower() for t in self.major] == ["normal"]

    def finding_vector(self) -> list[float]:
        have = findings_of_terms(self.major)
        return [1.0 if c in have else 0.0 for c in CHEXPERT_FINDINGS]


def parse_report(raw: bytes | str, source: str) -> IUReport:
    """One NLMCXR report XML; DataError naming ``source`` if it is not one."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataError(f"{source}: not a report XML ({exc})") from exc
    uid_el = root.find("uId")
    uid = uid_el.get("id", "") if uid_el is not None else ""
    if not uid:
        raise DataError(f"{source}: report XML without <uId id=...>")
    sections = {
        (el.get("Label") or "").upper(): " ".join((el.text or "").split())
        for el in root.iter("AbstractText")
    }
    return IUReport(
        uid=uid,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        major=[(el.text or "").strip() for el in root.findall("MeSH/major") if (el.text or "").strip()],
        images=[el.get("id", "") for el in root.findall("parentImage") if el.get("id")],
    )


def wheel_path(cache: Path) -> Path:
    """The torchxrayvision wheel in the cache, downloaded (not installed) on first use."""
    return pip_download_wheel(WHEEL, Path(cache) / CACHE_SUBDIR)


def wheel_reports(cache: Path) -> list[tuple[str, bytes]]:
    """``(member name, XML bytes)`` of every report in the wheel's ``NLMCXR_reports.tgz``."""
    wheel = wheel_path(cache)
    try:
        with zipfile.ZipFile(wheel) as zf:
            tgz = zf.read(REPORTS_MEMBER)
        out = []
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(".xml"):
                    fh = tf.extractfile(member)
                    if fh is not None:
                        out.append((member.name, fh.read()))
    except KeyError as exc:
        raise DataError(f"{wheel}: no {REPORTS_MEMBER} inside; is it the {WHEEL} wheel?") from exc
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(
            f"{wheel}: unreadable ({exc}); delete it and run `adamodal data fetch iu_reports`"
        ) from exc
    if len(out) != N_REPORTS:
        raise DataError(f"{wheel}: {len(out)} report XMLs, expected {N_REPORTS}; delete it and "
                        "run `adamodal data fetch iu_reports`")
    return sorted(out, key=lambda kv: _numeric_key(kv[0]))


def _numeric_key(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (int(stem), stem) if stem.isdigit() else (10**9, stem)


def report_samples(cache: Path, kind: str, prefix: str = "") -> tuple[list[Sample], int]:
    """The wheel's reports as text-only samples labelled by ``kind`` (findings | normal), and
    how many were left out for having neither FINDINGS nor IMPRESSION. ``prefix`` keeps their
    patient ids apart from another collection's."""
    samples: list[Sample] = []
    empty = 0
    for member, raw in wheel_reports(cache):
        report = parse_report(raw, f"{WHEEL}:{member}")
        if not report.text:
            empty += 1
            continue
        value: list[float] | str = report.finding_vector() if kind == "findings" else (
            "normal" if report.normal else "abnormal")
        samples.append(Sample(id=f"{prefix}{report.uid}", patient=f"{prefix}{report.uid}", label=value,
                              text=report.text, source=f"{WHEEL}:{member}"))
    return samples, empty
