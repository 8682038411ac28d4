"""IU X-ray reports: 3,955 real radiology reports (Indiana University), text only.

Read out of the ``torchxrayvision`` wheel's ``data/NLMCXR_reports.tgz`` (downloaded into the
cache, never installed or imported). Each report's FINDINGS and IMPRESSION are the text; the
label is normal/abnormal (``iu_reports.label = normal``) or the 14 CheXpert observations
mapped from its MeSH major terms (``findings``, multi-label; see :mod:`adamodal.data._iu`).
Reports with neither FINDINGS nor IMPRESSION (28) carry no text and are left out. A real
medical text-only data set: text-only clients, or the text side of any scenario.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from adamodal.data import _iu
from adamodal.data._medical import (
    CHEXPERT_FINDINGS,
    LABEL_KINDS,
    NORMAL_CLASSES,
    MedicalSource,
    Problems,
    Scan,
    choice_option,
)


class IUReportsSource(MedicalSource):
    """The NLMCXR report XMLs as a text-only data set (one item per report)."""

    name: ClassVar[str] = "iu_reports"
    modalities = ("text",)
    task = "multiclass"
    description: ClassVar[str] = (
        "IU X-ray: 3,927 real radiology reports (FINDINGS + IMPRESSION), normal/abnormal or "
        "14 CheXpert findings from MeSH terms (PyPI torchxrayvision, data only)"
    )
    options_defaults: ClassVar[dict[str, object]] = {"label": "normal"}

    def fetch(self, cache: Path) -> Path:
        """Download the wheel into ``cache/torchxrayvision`` (once); return its folder."""
        _iu.wheel_path(cache)
        return Path(cache) / _iu.CACHE_SUBDIR

    def scan(self, cache: Path, problems: Problems) -> Scan:
        label = choice_option(self.options, self.name, "label", "normal", LABEL_KINDS)
        samples, empty = _iu.report_samples(cache, label)
        task = "multilabel" if label == "findings" else "multiclass"
        classes = list(CHEXPERT_FINDINGS) if label == "findings" else list(NORMAL_CLASSES)
        meta = {
            "source": f"PyPI {_iu.WHEEL} (downloaded, not installed): {_iu.REPORTS_MEMBER}",
            "label": label,
            "reports": _iu.N_REPORTS,
            "left_out": f"{empty} reports with neither FINDINGS nor IMPRESSION",
            "licence": "CC BY-NC-ND 4.0 (Open-i, Indiana University)",
        }
        return Scan(samples, task, classes, meta)  # type: ignore[arg-type]


SOURCE = IUReportsSource

__all__ = ["SOURCE", "IUReportsSource"]
