"""The per-site folder layout: ROOT/client_XX/{images/,texts/,labels.csv}, clients as defined."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from adamodal.cli import main
from adamodal.config import resolve
from adamodal.data import get_source
from adamodal.data.scenario import SPLITS, build_scenario


def test_loads_clients_as_folders(folder_tree, med_cache) -> None:
    root = folder_tree()
    b = get_source("folder", {"root": str(root)}).load(med_cache)
    assert b.task == "multiclass" and b.classes == ["abnormal", "normal"]
    assert len(b) == 36 and b.client_names == ["client_01", "client_02", "client_03"]
    assert b.images is not None and b.images.shape == (36, 1, 64, 64, 1)
    assert b.texts is not None and b.has_image is not None and b.has_text is not None
    per_client = {name: (b.has_image[b.clients == c].all(), b.has_text[b.clients == c].all())
                  for c, name in enumerate(b.client_names)}
    assert per_client == {"client_01": (True, True), "client_02": (True, False), "client_03": (False, True)}
    # text-only items hold a zero placeholder image, image-only items an empty text
    assert not b.images[~b.has_image].any() and all(t == "" for t, h in zip(b.texts, b.has_text, strict=True) if not h)
    # FINDINGS/IMPRESSION headers are stripped from the text
    assert not any("FINDINGS:" in t for t in b.texts)
    # the patient column groups two samples each
    assert len(np.unique(b.groups)) == 18


def test_scenario_keeps_predefined_clients(folder_tree, med_cache) -> None:
    b = get_source("folder", {"root": str(folder_tree())}).load(med_cache)
    cfg = resolve({}, {"dataset": "folder", "seed": 3})  # clients.* counts do not apply
    scen = build_scenario(b, cfg)
    assert [(c.name, c.group) for c in scen.clients] == [
        ("client_01", "multimodal"), ("client_02", "image_only"), ("client_03", "text_only")]
    for c in scen.clients:
        items = np.concatenate([c.splits[s].idx for s in SPLITS])
        assert sorted(items.tolist()) == np.flatnonzero(b.clients == c.cid).tolist()
        split_of = {}
        for s in SPLITS:
            for g in b.groups[c.splits[s].idx]:
                assert split_of.setdefault(int(g), s) == s  # a patient in one split only
        assert c.splits["train"].has_img.all() == ("image" in c.modalities)
        assert not c.splits["train"].has_txt.any() if c.group == "image_only" else c.splits["train"].has_txt.all()
    # the global test set is the union of the clients' own test splits, each condition only
    # with the items that have what it shows
    own = np.sort(np.concatenate([c.splits["test"].idx for c in scen.clients]))
    assert set(scen.test["text"].idx) == set(own[b.has_text[own]])
    assert set(scen.test["image"].idx) == set(own[b.has_image[own]])
    assert set(scen.test["both"].idx) == set(own[b.has_image[own] & b.has_text[own]])


def test_partition_option_pools_the_folders(folder_tree, med_cache) -> None:
    b = get_source("folder", {"root": str(folder_tree()), "clients": "partition"}).load(med_cache)
    assert b.clients is None
    scen = build_scenario(b, resolve({}, {"dataset": "folder", "clients.multimodal": 2, "clients.image_only": 1,
                                          "clients.text_only": 1, "partition": "iid"}))
    assert len(scen.clients) == 4
    # rows never show a modality the item lacks
    for c in scen.clients:
        for s in SPLITS:
            v = c.splits[s]
            assert not (v.has_img & ~b.has_image[v.idx]).any() and not (v.has_txt & ~b.has_text[v.idx]).any()
            assert (v.has_img | v.has_txt).all()


@pytest.mark.parametrize(("policy", "expected"), [("zeros", 0.0), ("ones", 1.0), ("ignore", None)])
def test_multilabel_columns_and_uncertain_policy(tmp_path, med_cache, policy, expected) -> None:
    from tests.data.conftest import write_png

    folder = tmp_path / "r" / "client_01"
    for i in range(3):
        write_png(folder / "images" / f"x{i}.png", seed=i)
    (folder / "labels.csv").write_text("id,Edema,Pneumonia\nx0,1.0,-1.0\nx1,,0.0\nx2,0,1\n")
    b = get_source("folder", {"root": str(tmp_path / "r"), "uncertain": policy}).load(med_cache)
    assert b.task == "multilabel" and b.classes == ["Edema", "Pneumonia"] and b.texts is None
    assert b.labels[1].tolist() == [0.0, 0.0] and b.labels[2].tolist() == [0.0, 1.0]
    if expected is None:
        assert np.isnan(b.labels[0, 1])
    else:
        assert b.labels[0].tolist() == [1.0, expected]


def _run(root, out, method, towers):
    return main(["run", "--quiet", "--out", str(out), "--set", "dataset=folder", f"folder.root={root}",
                 f"method={method}", "rounds=2", f"towers={towers}", "local_epochs=1", "threads=1",
                 "adamodal.warmup_epochs=1", "adamodal.kd_epochs=1", "split.test=0.25"])


@pytest.mark.slow
@pytest.mark.parametrize(("method", "towers"), [("adamodal", "small"), ("fedavg", "small"), ("fedavg", "frozen")])
def test_end_to_end_run(folder_tree, med_cache, tmp_path, method, towers) -> None:
    """1 image+text, 1 image-only and 1 text-only client, two rounds, through the CLI."""
    root = folder_tree()
    assert _run(root, tmp_path / "run", method, towers) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["clients"] == {"multimodal": 1, "image_only": 1, "text_only": 1}
    assert set(summary["groups"]) == {"multimodal", "image_only", "text_only"}
    assert set(summary["test"]) == {"both", "image", "text"}
    assert len(summary["history"]) == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # one line per round per client, and a method may add its round's server-side numbers
    assert {r["client"] for r in rows if r["client"] != "server"} == {0, 1, 2}
    assert all("method" in r for r in rows if r["client"] == "server")


def test_run_on_broken_folder_fails_fast_with_the_check_lines(folder_tree, med_cache, tmp_path, capsys) -> None:
    root = folder_tree(n=4)
    (root / "client_03" / "texts" / "s2001.txt").write_text("  \n")
    with open(root / "client_02" / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["ghost", "p9", "normal"])
    assert _run(root, tmp_path / "run", "fedavg", "small") == 1
    err = capsys.readouterr().err
    assert "folder: 2 problem(s)" in err
    assert f"{root / 'client_03' / 'texts' / 's2001.txt'}: empty report" in err
    assert f"{root / 'client_02' / 'labels.csv'}:6: label row ghost has no image or report" in err
    assert not (tmp_path / "run" / "summary.json").exists()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == sorted(line for line in err.splitlines()[1:])


def test_data_info_names_the_sites(folder_tree, med_cache, capsys) -> None:
    assert main(["data", "info", "folder", "--set", f"folder.root={folder_tree()}"]) == 0
    out = capsys.readouterr().out
    assert "clients as the data defines them" in out
    assert "multimodal" in out and "client_01" in out and "client_03" in out


def test_test_folder_is_the_global_test_set(folder_tree, med_cache) -> None:
    import shutil

    root = folder_tree(n=6)
    shutil.copytree(root / "client_01", root / "test")
    labels = root / "test" / "labels.csv"
    labels.write_text(labels.read_text().replace("client_01-p", "held-out-p"))
    b = get_source("folder", {"root": str(root)}).load(med_cache)
    assert b.client_names == ["client_01", "client_02", "client_03"]
    assert b.fixed_test is not None and b.fixed_test.sum() == 6 and (b.clients[b.fixed_test] == -1).all()
    scen = build_scenario(b, resolve({}, {"dataset": "folder"}))
    assert sorted(scen.test["both"].idx.tolist()) == np.flatnonzero(b.fixed_test).tolist()
    # the same patient in the test folder and in a client is a leak
    labels.write_text(labels.read_text().replace("held-out-p", "client_01-p"))
    from adamodal.data.check import check

    lines = check(str(root), {}, med_cache)[2].lines()
    assert lines and all("is in two splits (test and train)" in line for line in lines)


def test_one_sites_folder_loads_alone_and_is_checked_as_such(folder_tree, med_cache, capsys) -> None:
    """``folder.layout=site``: ROOT is one client's folder (what a site holds in a deployment);
    its items belong to no named client and none is a test item."""
    site = folder_tree() / "client_02"
    b = get_source("folder", {"root": str(site), "layout": "site"}).load(med_cache)
    assert len(b) == 12 and b.clients is None and b.fixed_test is None and b.texts is None
    assert main(["data", "check", str(site)]) == 0
    assert "folder" in capsys.readouterr().out
    (site / "labels.csv").write_text("id,label\nnope,normal\n")
    assert main(["data", "check", str(site)]) == 1
    assert f"{site / 'images'}" in capsys.readouterr().out  # its files have no label row
