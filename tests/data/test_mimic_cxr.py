"""MIMIC-CXR-JPG layout: files/pXX/pID/sID/*.jpg, sID.txt reports, CheXpert CSV, split CSV."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.config import resolve
from adamodal.data import get_source
from adamodal.data._medical import CHEXPERT_FINDINGS, findings_impression
from adamodal.data.scenario import SPLITS, build_scenario
from adamodal.errors import ConfigError
from tests.data.conftest import mimic_report


def _load(root, cache, **opts):
    return get_source("mimic_cxr", {"root": str(root), **opts}).load(cache)


def test_loads_images_reports_labels(mimic_tree, med_cache) -> None:
    b = _load(mimic_tree(), med_cache)
    assert b.task == "multilabel" and b.classes == list(CHEXPERT_FINDINGS)
    assert len(b) == 24 and b.images is not None and b.images.shape[1:] == (1, 64, 64, 1)
    assert b.has_image is None and b.has_text is None  # every image has its study's report
    assert len(np.unique(b.groups)) == 6
    # the official split's test patient (the last one) is the global test set
    assert b.fixed_test is not None and b.fixed_test.sum() == 4
    assert len(np.unique(b.groups[b.fixed_test])) == 1
    assert all("INDICATION" not in t and "FINAL REPORT" not in t for t in b.texts)


def test_gzipped_csvs(mimic_tree, med_cache) -> None:
    b = _load(mimic_tree(gz=True), med_cache)
    assert len(b) == 24 and b.fixed_test is not None


def test_uncertain_policy(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    raw = (root / "mimic-cxr-2.0.0-chexpert.csv").read_text().splitlines()
    n_uncertain = sum(line.split(",")[2:].count("-1.0") for line in raw[1:])
    assert n_uncertain > 0
    zeros, ones, ignore = (_load(root, med_cache, uncertain=p).labels for p in ("zeros", "ones", "ignore"))
    unknown = np.isnan(ignore)
    assert unknown.sum() == 2 * n_uncertain  # two images per study
    assert (zeros[unknown] == 0).all() and (ones[unknown] == 1).all()
    assert np.array_equal(zeros[~unknown], ones[~unknown])
    with pytest.raises(ConfigError, match="mimic_cxr.uncertain must be one of zeros, ones, ignore"):
        _load(root, med_cache, uncertain="maybe")


def test_normal_label_and_negbio(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    findings = _load(root, med_cache)
    normal = _load(root, med_cache, label="normal")
    assert normal.task == "multiclass" and normal.classes == ["abnormal", "normal"]
    no_finding = findings.labels[:, CHEXPERT_FINDINGS.index("No Finding")] == 1
    assert np.array_equal(normal.labels == 1, no_finding)
    (root / "mimic-cxr-2.0.0-chexpert.csv").rename(root / "mimic-cxr-2.0.0-negbio.csv")
    assert len(_load(root, med_cache, labels="negbio")) == 24


def test_patient_level_split_integrity(mimic_tree, med_cache) -> None:
    """Whatever the seed, a patient's images share one client and one split."""
    b = _load(mimic_tree(patients=10), med_cache)
    for seed in range(4):
        cfg = resolve({}, {"dataset": "mimic_cxr", "seed": seed, "clients.multimodal": 2, "clients.image_only": 1,
                           "clients.text_only": 1, "partition": "iid", "split.val": 0.2})
        scen = build_scenario(b, cfg)
        where: dict[int, tuple[int, str]] = {}
        for c in scen.clients:
            for s in SPLITS:
                for g in b.groups[c.splits[s].idx].tolist():
                    assert where.setdefault(g, (c.cid, s)) == (c.cid, s)
        test_groups = set(b.groups[scen.test["both"].idx].tolist())
        assert test_groups and not test_groups & set(where)


def test_partial_copy_skips_absent_patients(mimic_tree, med_cache) -> None:
    import shutil

    root = mimic_tree()
    shutil.rmtree(next((root / "files").glob("p1*/p10000001")))
    b = _load(root, med_cache)
    assert len(b) == 20 and "1 labelled patients without a folder" in str(b.meta["skipped"])


def test_report_without_image_is_a_text_only_item(mimic_tree, med_cache) -> None:
    import shutil

    root = mimic_tree()
    study = next((root / "files").glob("p1*/p10000002/s*/"))
    shutil.rmtree(study)
    b = _load(root, med_cache)
    assert len(b) == 23 and b.has_image is not None and (~b.has_image).sum() == 1
    assert b.text_mask().all()


def test_findings_impression_extraction(iu_reports) -> None:
    r = next(r for _, _, r in iu_reports if r.findings and r.impression)
    text = findings_impression(mimic_report(r))
    assert text == f"{r.findings} {r.impression}"
    assert findings_impression("no headers at all\n here") == "no headers at all here"


def test_iu_reports_as_text_only_clients(mimic_tree, med_cache) -> None:
    """Real IU reports beside MIMIC images: the scenario hands them to the text-only clients."""
    b = _load(mimic_tree(), med_cache, iu_reports=True)
    assert len(b) == 24 + 3927 and b.has_image is not None and b.has_image.sum() == 24
    assert b.classes == list(CHEXPERT_FINDINGS)
    cfg = resolve({}, {"dataset": "mimic_cxr", "clients.multimodal": 2, "clients.image_only": 1,
                       "clients.text_only": 2, "partition": "iid"})
    scen = build_scenario(b, cfg)
    for c in scen.clients:
        items = np.concatenate([c.splits[s].idx for s in SPLITS])
        native_images = b.has_image[items]
        assert native_images.all() if c.group != "text_only" else not native_images.any()
    assert sum(len(c.splits["train"]) for c in scen.clients if c.group == "text_only") > 2000
