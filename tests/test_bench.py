"""``adamodal bench`` / ``demo``: runs in parallel worker processes give the sequential results."""

from __future__ import annotations

import tomllib

from adamodal.bench import run_variants

BASE = {"clients.multimodal": 2, "clients.image_only": 1, "clients.text_only": 1, "rounds": 1, "local_epochs": 1,
        "partition": "iid", "data.max_items": 300, "device": "cpu"}


def _metrics(runs):
    return {label: [(s["groups"], s["groups_server_test"], s["test"], s["bytes_up"]) for s in summaries]
            for label, summaries in runs.items()}


def test_parallel_runs_equal_sequential_runs(tmp_path, capsys):
    variants = {"fedavg": {"method": "fedavg"}, "local": {"method": "local"}}
    seq = run_variants(variants, [0, 1], BASE, tmp_path / "seq", quiet=True, title="t", jobs=1)
    par = run_variants(variants, [0, 1], BASE, tmp_path / "par", quiet=True, title="t", jobs=2)
    assert list(par) == ["fedavg", "local"] and [s["seed"] for s in par["local"]] == [0, 1]  # the order asked
    assert _metrics(par) == _metrics(seq)
    assert (tmp_path / "par" / "local" / "seed1" / "history.png").stat().st_size > 0
    assert "fedavg" in (tmp_path / "par" / "results.md").read_text()
    # parallel runs fill the cores themselves: none starts its own worker pool
    config = tomllib.loads((tmp_path / "par" / "fedavg" / "seed0" / "config.toml").read_text())
    assert config["workers"] == 1
    seq_config = tomllib.loads((tmp_path / "seq" / "fedavg" / "seed0" / "config.toml").read_text())
    assert seq_config["workers"] == 0  # the sequential path keeps the default (automatic)


def test_the_longest_runs_start_first(tmp_path, monkeypatch):
    """Runs are handed to the workers by the methods' relative cost, longest first, and the
    tables keep the order asked for."""
    import adamodal.bench as bench

    submitted = []

    class Pool:
        def submit(self, fn, values, run_dir, progress):
            from concurrent.futures import Future
            submitted.append(values["method"])
            fut = Future()
            fut.set_result({"wall_s": 0.0, "method": values["method"]})
            return fut

    done = {}
    todo = [(m, 0, {**BASE, "method": m}, tmp_path / m) for m in ("central", "fedavg", "adamodal", "local")]
    bench._run_parallel(Pool(), todo, 2, done, quiet=True)
    assert submitted == ["adamodal", "local", "fedavg", "central"]
    assert set(done) == {(m, 0) for m in ("central", "fedavg", "adamodal", "local")}
