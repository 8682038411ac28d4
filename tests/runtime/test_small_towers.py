"""towers=small: trained-from-scratch towers through the same engine (Fashion-MNIST, LeNet)."""

from __future__ import annotations

from adamodal.config import resolve
from adamodal.runtime.simulator import run_experiment


def test_fmnist_cnn_learns(tmp_path):
    cfg = resolve({}, {
        "dataset": "fmnist", "method": "fedavg", "clients.multimodal": 0, "clients.image_only": 3,
        "clients.text_only": 0, "partition": "iid", "model": "cnn", "towers": "small", "optimizer": "sgd",
        "lr": 0.05, "momentum": 0.9, "batch_size": 32, "local_epochs": 2, "rounds": 3,
        "data.max_items": 1500, "eval.max_rows": 500, "device": "cpu",
    })
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert set(summary["groups"]) == {"image_only"}
    assert set(summary["test"]) == {"image"}
    # 10 classes: chance accuracy 0.1, chance AUC 0.5
    assert summary["test"]["image"]["accuracy"] > 0.45
    assert summary["test"]["image"]["macro_auc"] > 0.85
    # LeNet (conv6-conv16-fc120-fc84-fc10) has 44,426 float32 parameters
    assert summary["bytes_down"] == 3 * 3 * 44_426 * 4
