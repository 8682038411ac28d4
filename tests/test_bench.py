"""``adamodal bench`` / ``demo``: runs in parallel worker processes give the sequential results."""

from __future__ import annotations

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
