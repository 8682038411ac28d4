"""The scenario suite's bookkeeping: tables, heatmap and cache, on synthetic results (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamodal import suite
from adamodal.errors import ConfigError


def _rec(scenario: str, method: str, seed: int, groups: dict, bytes_up: float = 1e6, wall: float = 10.0) -> dict:
    if method == "ceiling":
        return {"scenario": scenario, "method": method, "seed": seed,
                "groups": {g: {"macro_auc": v, "model": "MLP"} for g, v in groups.items()}}
    return {"scenario": scenario, "method": method, "seed": seed, "groups": groups,
            "bytes_up_per_round": bytes_up, "wall_s": wall}


def synthetic() -> list[dict]:
    """few-multimodal: room on both unimodal groups; seed-16-2-2: FedAvg at the ceiling."""
    out = []
    for seed, jitter in ((0, -0.005), (1, 0.005)):
        out += [
            _rec("few-multimodal", "ceiling", seed, {"multimodal": 0.95, "image_only": 0.90, "text_only": 0.96}),
            _rec("few-multimodal", "fedavg", seed,
                 {"multimodal": 0.94 + jitter, "image_only": 0.80 + jitter, "text_only": 0.92 + jitter}),
            _rec("few-multimodal", "adamodal", seed,
                 {"multimodal": 0.945, "image_only": 0.85, "text_only": 0.90}, bytes_up=2.5e6, wall=30.0),
            _rec("seed-16-2-2", "ceiling", seed, {"multimodal": 0.97, "image_only": 0.90, "text_only": 0.97}),
            _rec("seed-16-2-2", "fedavg", seed, {"multimodal": 0.975, "image_only": 0.895, "text_only": 0.965},
                 bytes_up=2e6, wall=20.0),
            _rec("seed-16-2-2", "adamodal", seed, {"multimodal": 0.97, "image_only": 0.90, "text_only": 0.96},
                 bytes_up=3e6, wall=50.0),
        ]
    return out


def test_headroom_and_fraction_closed() -> None:
    data = suite.collect(synthetic())
    assert data["methods"] == ["fedavg", "adamodal"]
    assert data["rows"][:3] == [("few-multimodal", g) for g in ("multimodal", "image_only", "text_only")]
    assert suite.headroom(data, "few-multimodal", "image_only") == pytest.approx(0.10)
    # half the room closed on images; text got worse than FedAvg: a negative fraction
    assert suite.closed(data, "few-multimodal", "image_only", "adamodal") == pytest.approx(0.5)
    assert suite.closed(data, "few-multimodal", "text_only", "adamodal") == pytest.approx(-0.5)
    # headroom under 0.01: no fraction (0.005 / 0.005 would read as 100%)
    assert suite.headroom(data, "seed-16-2-2", "image_only") == pytest.approx(0.005)
    assert suite.closed(data, "seed-16-2-2", "image_only", "adamodal") is None
    assert suite.headroom(data, "seed-16-2-2", "multimodal") == pytest.approx(-0.005)


def test_markdown_tables() -> None:
    md = suite.suite_tables(synthetic())
    lines = md.splitlines()
    assert lines[0] == "| scenario | group | ceiling | fedavg | adamodal | headroom | closed: adamodal |"
    row = next(line for line in lines if line.startswith("| few-multimodal | image-only"))
    assert row == "| few-multimodal | image-only | 0.900 ± 0.000 | 0.800 ± 0.007 | 0.850 ± 0.000 | +0.100 | 50% |"
    row = next(line for line in lines if line.startswith("| seed-16-2-2 | image-only"))
    assert row.endswith("| +0.005 | – |")
    # costs relative to FedAvg, per scenario
    assert "| few-multimodal | 1.00, 1.00 | 2.50, 3.00 |" in lines
    assert "| seed-16-2-2 | 1.00, 1.00 | 1.50, 2.50 |" in lines


def test_tables_with_fedavg_alone_and_a_missing_group() -> None:
    records = [r for r in synthetic() if r["method"] != "adamodal" and r["scenario"] == "few-multimodal"]
    records.append(_rec("carmfl", "ceiling", 0, {"multimodal": 0.9, "image_only": 0.88}))
    records.append(_rec("carmfl", "fedavg", 0, {"multimodal": 0.85, "image_only": 0.80}))
    md = suite.suite_tables(records)
    assert "closed:" not in md
    assert "| carmfl | image-only | 0.880 | 0.800 | +0.080 |" in md
    assert "carmfl | text-only" not in md


@pytest.mark.parametrize("only_fedavg", [False, True])
def test_heatmap(tmp_path: Path, only_fedavg: bool) -> None:
    import matplotlib.image as mpimg

    records = [r for r in synthetic() if not only_fedavg or r["method"] != "adamodal"]
    path = suite.plot_headroom(records, tmp_path / "sub" / "headroom.png")
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05  # not a blank canvas


# ---- the cache, with the simulator and the ceiling stubbed out -----------------------------

@pytest.fixture
def stubs(monkeypatch):
    """Count runs and ceilings instead of training; every run "scores" 0.8 per group."""
    import adamodal.ceiling
    import adamodal.runtime.simulator as sim

    calls = {"run": [], "ceiling": []}

    def fake_run(cfg, out_dir, *, progress=True, resume=False, force=False):
        calls["run"].append((cfg["scenario"], cfg["method"], cfg["seed"], cfg["rounds"], resume))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(out_dir) / "config.toml")
        return {"rounds": cfg["rounds"], "groups_server_test": {"image_only": {"macro_auc": 0.8}},
                "bytes_up_per_round": 100, "wall_s": 1.0, "clients": {}}

    monkeypatch.setattr(sim, "run_experiment", fake_run)
    monkeypatch.setattr(sim, "prepare", lambda cfg, progress=True: cfg)
    monkeypatch.setattr(adamodal.ceiling, "ceilings", lambda exp, seed: (
        calls["ceiling"].append((exp["scenario"], seed)) or {"image_only": {"macro_auc": 0.9, "model": "MLP"}}))
    return calls


def test_the_suite_caches_and_resumes(tmp_path: Path, stubs) -> None:
    records = suite.run_suite(["carmfl", "few-multimodal"], [0, 1], ["adamodal"], tmp_path, rounds=3)
    assert len(stubs["run"]) == 8 and len(stubs["ceiling"]) == 4
    assert {r[1] for r in stubs["run"]} == {"fedavg", "adamodal"} and {r[3] for r in stubs["run"]} == {3}
    assert len(records) == 12
    saved = json.loads((tmp_path / "results" / "carmfl" / "adamodal-seed1.json").read_text())
    assert saved["groups"] == {"image_only": 0.8} and saved["rounds"] == 3
    # everything cached: nothing runs again
    again = suite.run_suite(["carmfl", "few-multimodal"], [0, 1], ["adamodal"], tmp_path, rounds=3)
    assert len(stubs["run"]) == 8 and again == records
    # a new method runs alone; the ceiling and the other methods come from the cache
    suite.run_suite(["carmfl"], [0], ["adamodal", "fedprox"], tmp_path, rounds=3)
    assert stubs["run"][8:] == [("carmfl", "fedprox", 0, 3, False)] and len(stubs["ceiling"]) == 4
    # other rounds: every method runs again, but the ceiling (it trains no rounds) does not
    suite.run_suite(["carmfl"], [0], ["adamodal"], tmp_path, rounds=4)
    assert [r[1] for r in stubs["run"][9:]] == ["fedavg", "adamodal"] and len(stubs["ceiling"]) == 4
    # an override that changes the data does redo the ceiling
    suite.run_suite(["carmfl"], [0], [], tmp_path, rounds=4, overrides={"partition.alpha": "0.2"})
    assert len(stubs["ceiling"]) == 5


def test_rerun_replaces_a_methods_cached_records_and_nothing_else(tmp_path: Path, stubs) -> None:
    suite.run_suite(["carmfl"], [0, 1], ["adamodal"], tmp_path, rounds=3)
    assert len(stubs["run"]) == 4
    suite.run_suite(["carmfl"], [0, 1], ["adamodal"], tmp_path, rounds=3, rerun=["adamodal"])
    assert [(r[1], r[2], r[4]) for r in stubs["run"][4:]] == [("adamodal", 0, False), ("adamodal", 1, False)]
    assert len(stubs["ceiling"]) == 2  # the ceiling and FedAvg came from the cache
    with pytest.raises(ConfigError, match="--rerun fedprox"):
        suite.run_suite(["carmfl"], [0], ["adamodal"], tmp_path, rounds=3, rerun=["fedprox"])


def test_a_new_ceiling_version_redoes_the_ceilings(tmp_path: Path, stubs, monkeypatch) -> None:
    import adamodal.ceiling

    suite.run_suite(["carmfl"], [0], [], tmp_path, rounds=2)
    monkeypatch.setattr(adamodal.ceiling, "VERSION", adamodal.ceiling.VERSION + 1)
    suite.run_suite(["carmfl"], [0], [], tmp_path, rounds=2)
    assert len(stubs["ceiling"]) == 2 and len(stubs["run"]) == 1


def test_a_finished_run_without_its_record_is_not_rerun(tmp_path: Path, stubs) -> None:
    cfg = suite.suite_config("carmfl", "fedavg", 0, rounds=2)
    suite.run_method(cfg, tmp_path)
    run_dir = tmp_path / "runs" / "carmfl" / "fedavg" / "seed0"
    (run_dir / "summary.json").write_text(json.dumps({
        "rounds": 2, "groups_server_test": {"image_only": {"macro_auc": 0.7}}, "bytes_up_per_round": 1,
        "wall_s": 2.0, "clients": {}}))
    (tmp_path / "results" / "carmfl" / "fedavg-seed0.json").unlink()  # killed before the record
    assert suite.run_method(cfg, tmp_path)["groups"] == {"image_only": 0.7}
    assert len(stubs["run"]) == 1


def test_bad_names_fail_before_anything_runs(tmp_path: Path, stubs) -> None:
    with pytest.raises(ConfigError, match="method"):
        suite.run_suite(["carmfl"], [0], ["fedavgg"], tmp_path)
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        suite.run_suite(["carmfl", "nope"], [0], [], tmp_path)
    assert stubs["run"] == [] and stubs["ceiling"] == []


def test_explicit_keys_win_over_the_scenario_in_the_suite() -> None:
    cfg = suite.suite_config("few-multimodal", "fedavg", 2, {"partition.alpha": "0.3", "seed": "9"}, rounds=5)
    assert cfg["partition.alpha"] == 0.3 and cfg["clients.image_only"] == 8
    assert cfg["seed"] == 2 and cfg["rounds"] == 5  # the suite's own seed and rounds win


def test_the_benchmark_command(tmp_path: Path, stubs, capsys) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "missing_modality.py"
    spec = importlib.util.spec_from_file_location("missing_modality", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main
    out = tmp_path / "suite"
    assert main(["--scenarios", "carmfl,few-multimodal", "--seeds", "0", "--methods", "adamodal",
                 "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    md = (out / "results.md").read_text()
    assert md.startswith("# Missing-modality suite\n\nseeds 0; rounds 2")
    assert "| carmfl | image-only | 0.900 | 0.800 | 0.800 | +0.100 | 0% |" in md
    assert (out / "headroom.png").stat().st_size > 1000
    assert len(stubs["run"]) == 4
    assert main(["--scenarios", "carmfl", "--methods", "fedavgg", "--out", str(out)]) == 2
    assert "fedavgg" in capsys.readouterr().err


def test_a_variant_runs_its_method_with_its_keys_under_its_own_name(tmp_path, monkeypatch):
    cfg = suite.suite_config("carmfl", "fedavg_dropout", 0, rounds=2)
    assert cfg["method"] == "fedavg" and cfg["fedavg.modality_dropout"] == 0.9
    assert suite.suite_config("carmfl", "fedavg", 0, rounds=2)["fedavg.modality_dropout"] == 0.0


def test_tables_can_be_rebuilt_from_the_records_alone(tmp_path):
    for name, groups in (("ceiling", {"image_only": {"macro_auc": 0.9}}), ("fedavg", {"image_only": 0.8}),
                         ("adamodal", {"image_only": 0.85})):
        suite._write(tmp_path / "results" / "carmfl" / f"{name}-seed0.json",
                     {"scenario": "carmfl", "method": name, "seed": 0, "digest": "old", "groups": groups,
                      "bytes_up_per_round": 10, "wall_s": 1.0})
    records = suite.cached_records(tmp_path, ["carmfl", "few-multimodal"], [0, 1], ["adamodal", "prototype"])
    assert sorted(r["method"] for r in records) == ["adamodal", "ceiling", "fedavg"]
    assert "50%" in suite.suite_tables(records)  # (0.85 - 0.80) / (0.90 - 0.80)


def test_a_run_folder_from_an_older_version_is_run_again_not_an_error(tmp_path, monkeypatch):
    cfg = suite.suite_config("carmfl", "fedavg", 0, rounds=2)
    run_dir = tmp_path / "runs" / "carmfl" / "fedavg" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text('method = "fedavg"\n"fedavg.gone" = 1\n')
    (run_dir / "summary.json").write_text("{}")
    calls = []

    def fake_run(cfg, out, **kw):
        calls.append(kw)
        return {"rounds": 2, "groups_server_test": {"image_only": {"macro_auc": 0.7}}, "bytes_up_per_round": 1,
                "wall_s": 1.0, "clients": {}}

    monkeypatch.setattr("adamodal.runtime.simulator.run_experiment", fake_run)
    assert suite.run_method(cfg, tmp_path)["groups"] == {"image_only": 0.7}
    assert calls and calls[0]["resume"] is False


def test_a_cached_result_survives_changes_to_other_methods_keys_only():
    base = suite.suite_config("carmfl", "prototype", 0, rounds=2)
    drop = suite.other_methods_keys("prototype")
    assert "adamodal.rank" in drop and "fedavg.modality_dropout" not in drop  # inherited from FedAvg
    other = suite.suite_config("carmfl", "prototype", 0, {"adamodal.rank": "8"}, rounds=2)
    own = suite.suite_config("carmfl", "prototype", 0, {"fedavg.modality_dropout": "0.3"}, rounds=2)
    assert suite.digest(other, drop) == suite.digest(base, drop)
    assert suite.digest(own, drop) != suite.digest(base, drop)


def test_the_number_of_workers_does_not_invalidate_a_cached_result(tmp_path):
    """``workers`` changes where the clients run, never the result (tests/runtime/test_workers.py)."""
    base = suite.suite_config("carmfl", "fedavg", 0, rounds=2)
    parallel = suite.suite_config("carmfl", "fedavg", 0, {"workers": "2"}, rounds=2)
    assert parallel["workers"] == 2 and suite.digest(parallel) == suite.digest(base)
    assert suite.digest(suite.suite_config("carmfl", "fedavg", 0, rounds=3)) != suite.digest(base)
    base.save(tmp_path / "config.toml")
    assert suite._same_config(tmp_path / "config.toml", parallel)
    assert not suite._same_config(tmp_path / "config.toml", suite.suite_config("carmfl", "fedavg", 1, rounds=2))


def test_a_run_saved_before_a_key_existed_is_not_the_same_run(tmp_path):
    """A finished run whose config.toml lacks a key that exists now (a default added since) ran
    without it: resolving the old file would fill in today's default and make it look current."""
    cfg = suite.suite_config("carmfl", "adamodal", 0, rounds=2)
    cfg.save(tmp_path / "config.toml")
    assert suite._same_config(tmp_path / "config.toml", cfg)
    lines = (tmp_path / "config.toml").read_text().splitlines()
    (tmp_path / "config.toml").write_text("\n".join(x for x in lines if "adamodal.beta" not in x) + "\n")
    assert not suite._same_config(tmp_path / "config.toml", cfg)
