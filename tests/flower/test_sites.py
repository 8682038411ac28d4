"""Site-local data through the whole Flower code path, in this process (the ClientApp answers
through a loopback Grid): each site reads only its own folder, the server learns the clients
from their declarations, checks one label space, and without a test set reports federated
evaluation only."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from adamodal.config import resolve
from adamodal.data import get_source
from adamodal.data.scenario import build_scenario
from adamodal.errors import AdamodalError, ConfigError, DataError
from adamodal.flower.app import app_pyproject
from adamodal.flower.server_app import ERROR_FILE, run_server
from adamodal.report import run_rows
from adamodal.runtime.sites import prepare_site
from tests.flower.sites import KINDS, SITE_RUN, site_grid, write_consortium, write_site


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMODAL_CACHE", str(tmp_path / "cache"))


def _run(tmp_path, sites, server, **overrides):
    cfg = resolve({}, {**SITE_RUN, "method": "fedavg", "folder.root": str(server), **overrides})
    rc = app_pyproject(cfg, tmp_path / "out", timeout=5, wait=0)["tool"]["flwr"]["app"]["config"]
    return run_server(site_grid(rc, sites, tmp_path / "state"), rc)


def test_without_a_server_test_set_the_run_reports_federated_evaluation_only(tmp_path):
    sites, server = write_consortium(tmp_path / "data", test=False)
    summary = _run(tmp_path, sites, server)
    assert summary["test"] == {} and summary["groups_server_test"] == {}
    assert set(summary["groups"]) == {"multimodal", "image_only", "text_only"}
    assert summary["clients"] == {"multimodal": 1, "image_only": 1, "text_only": 1}
    # each group is scored on its clients' own test splits, and training helped there
    before, after = summary["history"][0]["groups"], summary["groups"]
    assert np.mean([after[g]["macro_auc"] for g in after]) > np.mean([before[g]["macro_auc"] for g in before]) + 0.1
    header, rows = run_rows(summary)
    assert [r[0] for r in rows] == ["image+text", "image-only", "text-only"]  # no server-view rows


def test_with_a_server_test_set_the_server_scores_its_own_rows(tmp_path):
    sites, server = write_consortium(tmp_path / "data")
    summary = _run(tmp_path, sites, server)
    assert set(summary["test"]) == {"both", "image", "text"}
    assert summary["test"]["both"]["macro_auc"] > 0.8
    assert summary["groups_server_test"] == {}  # sites hold none of the server's rows


def test_a_site_with_another_label_space_is_one_error_naming_it(tmp_path):
    sites, server = write_consortium(tmp_path / "data")
    shutil.rmtree(sites[2])
    write_site(sites[2], 30, KINDS[2], seed=3, labels=("abnormal", "normal", "uncertain"))
    with pytest.raises(DataError, match=r"site client-id 2: its labels \(multiclass: abnormal, normal, uncertain\) "
                                        r"differ from site client-id 0's \(multiclass: abnormal, normal\)"):
        _run(tmp_path, sites, server)
    assert "site client-id 2" in (tmp_path / "out" / ERROR_FILE).read_text()


def test_a_server_test_set_with_other_labels_is_one_error_naming_it(tmp_path):
    sites, server = write_consortium(tmp_path / "data", test=False)
    write_site(server / "test", 12, ("images", "texts"), seed=9, labels=("benign", "malignant"))
    with pytest.raises(DataError, match=f"{server / 'test'}: the server's test set labels"):
        _run(tmp_path, sites, server)


def test_a_site_splits_its_rows_as_the_scenario_splits_that_client(tmp_path):
    """Client k's folder alone gives the same train/val/test rows as the multi-client layout
    ROOT/client_0k/ gives client k."""
    sites, _ = write_consortium(tmp_path / "data", test=False)
    root = tmp_path / "all"
    for k, site in enumerate(sites):
        shutil.copytree(site, root / f"client_0{k}")
    cfg = resolve({}, {**SITE_RUN, "folder.root": str(root)})
    bundle = get_source("folder", cfg.section("folder")).load(tmp_path / "cache")
    scen = build_scenario(bundle, cfg)
    for k, site in enumerate(sites):
        mine = prepare_site(cfg, k, site)
        assert mine.declaration.group == scen.clients[k].group
        for split in ("train", "val", "test"):
            ids = sorted(np.asarray(bundle.labels)[scen.clients[k].splits[split].idx].tolist())
            assert len(getattr(mine.data, split)) == len(scen.clients[k].splits[split])
            assert sorted(getattr(mine.data, split).y.tolist()) == ids


def test_a_site_needs_its_data_folder(tmp_path):
    cfg = resolve({}, {**SITE_RUN})
    with pytest.raises(ConfigError, match="--data SITE_DIR"):
        prepare_site(cfg, 0, "")
    with pytest.raises(AdamodalError, match="not a folder"):
        prepare_site(cfg, 0, tmp_path / "nowhere")


def test_a_deployed_site_without_its_data_folder_is_told_to_pass_one(tmp_path):
    from flwr.app import Context, RecordDict

    from adamodal.flower import client_app

    cfg = resolve({}, {**SITE_RUN})
    rc = app_pyproject(cfg, tmp_path / "out")["tool"]["flwr"]["app"]["config"]
    context = Context(run_id=1, node_id=7, node_config={"client-id": 0}, state=RecordDict(), run_config=rc)
    with pytest.raises(ConfigError, match="--data SITE_DIR"):
        client_app._side(context)


def test_in_a_simulation_the_virtual_sites_read_the_whole_root_and_match_the_simulator(tmp_path):
    """Virtual SuperNodes have no --data: each prepares the simulator's experiment from
    ROOT/client_XX/ and keeps its client; the server still reads only ROOT/test/."""
    from adamodal.runtime.simulator import Simulator, prepare
    from tests.flower.loopback import LoopbackGrid

    sites, server = write_consortium(tmp_path / "data")
    root = tmp_path / "all"
    for k, site in enumerate(sites):
        shutil.copytree(site, root / f"client_0{k}")
    shutil.copytree(server / "test", root / "test")
    cfg = resolve({}, {**SITE_RUN, "method": "fedavg", "folder.root": str(root)})
    rc = app_pyproject(cfg, tmp_path / "out", timeout=5, wait=0)["tool"]["flwr"]["app"]["config"]
    summary = run_server(LoopbackGrid(rc, 3, tmp_path / "state"), rc)
    ref = Simulator(prepare(cfg, progress=False), tmp_path / "ref", progress=False).run()
    assert summary["groups"] == ref["groups"] and summary["test"] == ref["test"]
    assert summary["groups_server_test"] == ref["groups_server_test"] != {}


def test_a_method_without_a_server_model_has_no_server_test_score_on_site_local_data(tmp_path):
    """Scoring ``local``'s client models on the server's test set would need that set on the
    sites: the server keeps it, so the run reports the clients' own test splits only."""
    sites, server = write_consortium(tmp_path / "data")
    summary = _run(tmp_path, sites, server, method="local")
    assert summary["test"] == {} and set(summary["groups"]) == {"multimodal", "image_only", "text_only"}
