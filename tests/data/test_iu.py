"""IU X-ray: the reports in the torchxrayvision wheel (text only) and the two image layouts."""

from __future__ import annotations

import importlib.util

import numpy as np

from adamodal.data import get_source
from adamodal.data._iu import findings_of_terms
from adamodal.data._medical import CHEXPERT_FINDINGS


def test_iu_reports_real_counts(med_cache) -> None:
    b = get_source("iu_reports").load(med_cache)
    assert b.modalities == ("text",) and b.task == "multiclass" and b.classes == ["abnormal", "normal"]
    # 3,955 reports, 28 of them with neither FINDINGS nor IMPRESSION
    assert len(b) == 3927 and all(t.strip() for t in b.texts)
    assert np.bincount(b.labels).tolist() == [2564, 1363]
    assert importlib.util.find_spec("torchxrayvision") is None  # read from the wheel, never installed
    f = get_source("iu_reports", {"label": "findings"}).load(med_cache)
    assert f.task == "multilabel" and f.classes == list(CHEXPERT_FINDINGS)
    counts = dict(zip(f.classes, f.labels.sum(axis=0).astype(int).tolist(), strict=True))
    assert counts["No Finding"] == 1363 and counts["Cardiomegaly"] > 300 and counts["Pneumothorax"] > 10
    # "No Finding" never sits beside a finding
    nf = f.labels[:, f.classes.index("No Finding")] == 1
    assert f.labels[nf].sum() == nf.sum()


def test_mesh_mapping() -> None:
    assert findings_of_terms(["normal"]) == {"No Finding"}
    assert findings_of_terms(["Opacity/lung/base/left", "Pulmonary Atelectasis/base"]) == {"Lung Opacity", "Atelectasis"}
    assert findings_of_terms(["Cardiac Shadow/enlarged/mild"]) == {"Cardiomegaly"}
    assert findings_of_terms(["Mediastinum/prominent"]) == {"Enlarged Cardiomediastinum"}
    assert findings_of_terms(["Thoracic Vertebrae/degenerative"]) == set()


def test_annotation_layout(iu_trees, med_cache) -> None:
    root = iu_trees["annotation"]()
    chosen = iu_trees["chosen"]()
    b = get_source("iu_xray", {"root": str(root)}).load(med_cache)
    n_images = sum(len(r.images) for _, _, r in chosen)
    assert len(b) == n_images and b.images is not None and b.has_image is None
    assert len(np.unique(b.groups)) == len(chosen)
    assert b.fixed_test is not None and len(np.unique(b.groups[b.fixed_test])) == 2
    # labels come from the real reports' MeSH terms
    assert (b.labels == 1).sum() == sum(len(r.images) for _, _, r in chosen if r.normal)
    assert "torchxrayvision" in str(b.meta["labels_from"])


def test_nlmcxr_layout(iu_trees, med_cache) -> None:
    root = iu_trees["nlmcxr"]()
    chosen = iu_trees["chosen"]()
    b = get_source("iu_xray", {"root": str(root), "label": "findings"}).load(med_cache)
    assert len(b) == sum(len(r.images) for _, _, r in chosen) and b.task == "multilabel"
    by_uid = {r.uid: r for _, _, r in chosen}
    texts = set(b.texts)
    assert texts == {r.text for r in by_uid.values()}
    expected = np.array([r.finding_vector() for r in by_uid.values() for _ in r.images])
    assert sorted(map(tuple, b.labels.tolist())) == sorted(map(tuple, expected.tolist()))
