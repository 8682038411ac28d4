"""Bad data gets one DataError naming the file (or data set, or client) and the reason:
missing file, corrupt image, empty text, label count mismatch, unknown modality, empty client.
(NaN in cached features: tests/towers/test_features.py.)"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from adamodal.data.base import Bundle
from adamodal.data.scenario import build_scenario
from adamodal.errors import DataError
from tests.data.test_scenario import cfg_for, make_bundle


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_file_names_it(tmp_path: Path) -> None:
    from adamodal.data.fmnist import read_idx

    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert "train-images-idx3-ubyte.gz: unreadable" in _one_line(err)


def test_corrupt_image_names_it(tmp_path: Path) -> None:
    from adamodal.data.emoji import _read_png

    png = tmp_path / "apple" / "64" / "1f600.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG header, then nothing sensible
    with pytest.raises(DataError) as err:
        _read_png(png)
    assert f"{png}: unreadable image" in _one_line(err)


def test_corrupt_idx_file_names_it(tmp_path: Path) -> None:
    from adamodal.data.fmnist import read_idx

    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))  # says 5 labels, holds 2
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in _one_line(err)


def test_empty_text_names_file_and_line() -> None:
    from adamodal.data._orange_tab import parse_tab

    raw = "text\tcategory\nstring\td\n\tclass\nfirst document\tsport\n \tpolitics\n"
    with pytest.raises(DataError) as err:
        parse_tab(raw, "wheel.whl:news-train.tab")
    assert _one_line(err) == "wheel.whl:news-train.tab: line 5 has an empty text"


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"groups": np.arange(3)}, "3 groups for 4 labels"),
    ({"texts": ["a", "b"]}, "2 texts for 4 labels"),
    ({"labels": np.array([0, 1, 2, 7])}, "labels must be [N] ids in 0..2"),
    ({"texts": None}, "neither images nor texts"),
    ({"labels": np.zeros(0, np.int64), "groups": np.zeros(0, np.int64), "texts": []}, "no items"),
])
def test_inconsistent_bundles(kwargs: dict, reason: str) -> None:
    base = {"name": "mydata", "task": "multiclass", "classes": ["a", "b", "c"], "labels": np.array([0, 1, 2, 0]),
            "groups": np.arange(4), "texts": ["w", "x", "y", "z"]}
    with pytest.raises(DataError) as err:
        Bundle(**(base | kwargs))
    assert _one_line(err).startswith("mydata: ") and reason in str(err.value)


def test_multilabel_label_count_mismatch() -> None:
    with pytest.raises(DataError, match=r"labels must be \[N, 3\], got \(2, 2\)"):
        Bundle("cxr", "multilabel", ["a", "b", "c"], np.zeros((2, 2), np.float32), np.arange(2), texts=["x", "y"])


def test_unknown_modality_for_the_scenario() -> None:
    text_only = make_bundle(60, image=False)
    with pytest.raises(DataError) as err:
        build_scenario(text_only, cfg_for(**{"clients.image_only": 1}))
    msg = _one_line(err)
    assert "dataset synthetic has no image modality but clients.multimodal=4" in msg and "clients.image_only=0" in msg


def test_empty_client() -> None:
    tiny = make_bundle(6)
    with pytest.raises(DataError) as err:
        build_scenario(tiny, cfg_for(**{"clients.multimodal": 30, "split.global_test": 0.0}))
    assert "clients but only" in _one_line(err)


def test_empty_training_split_names_the_client(small_experiment, monkeypatch) -> None:
    """A client left with validation/test rows only: prepare() names it (exit code 1)."""
    import adamodal.runtime.simulator as sim_mod
    from adamodal.config import resolve
    from tests.conftest import SMALL

    real = sim_mod.materialize

    def empty_train(inputs, labels, view):
        t = real(inputs, labels, view)
        return t.subset(np.zeros(0, np.int64)) if view is first_train else t

    cfg = resolve({}, SMALL)
    scen = build_scenario(small_experiment.bundle, cfg)
    first_train = scen.clients[2].splits["train"]
    monkeypatch.setattr(sim_mod, "build_scenario", lambda b, c: scen)
    monkeypatch.setattr(sim_mod, "materialize", empty_train)
    with pytest.raises(DataError, match=r"client 2 \(multimodal\) has no training samples"):
        sim_mod.prepare(cfg, progress=False)
