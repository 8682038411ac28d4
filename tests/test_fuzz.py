"""Fuzzing (hypothesis) of what users and disks hand the CLI: config values, config files,
checkpoints, cache and data files. The promise: exit code 0, 1 (bad data, failed run) or 2 (bad
config or command line), one line on stderr, never a traceback; and nothing in an existing run
folder is overwritten without ``--force``.

Example counts are small (seconds each); the example database stays off so CI is repeatable.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamodal.runtime.simulator as sim_mod
from adamodal.cli import main
from adamodal.config import all_defaults
from adamodal.errors import AdamodalError, DataError

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEYS = sorted(all_defaults())
SMALL = ["clients.multimodal=3", "clients.image_only=1", "clients.text_only=1", "partition=iid", "rounds=1",
         "local_epochs=1", "device=cpu"]

# values a user might type: numbers of every size and sign, words, empty, symbols
VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "true", "false", "nan", "inf", "-inf", "1e400", "0", "-1", "0.5", "none", "median",
                     "trimmed:0.3", "trimmed:", "client", "server", "fedavg", "emoji", "=", "a=b", "é", "\x00"]),
    st.text(max_size=12),
)


class Accepted(Exception):  # noqa: N818 - a signal, not an error
    """Raised instead of loading data: the command line and config were accepted."""


def run_cli(argv: list[str], capsys) -> tuple[int | str, str]:
    try:
        code: int | str = main(argv)
    except Accepted:
        code = "accepted"
    err = capsys.readouterr().err
    return code, err


def assert_clean_failure(code, err: str) -> None:
    assert code in (0, 1, 2, "accepted"), (code, err)
    assert "Traceback" not in err
    if code in (1, 2):
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("adamodal: error: "), err


@pytest.fixture
def existing_run(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A finished run folder; its bytes must survive every attempt to run into it."""
    out = tmp_path / "done"
    out.mkdir()
    files = {"summary.json": b'{"method": "fedavg"}\n', "metrics.jsonl": b"{}\n", "config.toml": b'method = "fedavg"\n',
             "history.png": b"\x89PNG"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out, files


@FAST
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_config_value_gives_a_clean_outcome(key, value, capsys, monkeypatch, tmp_path, existing_run):
    """Every key with a random value: rejected with exit 2 and one line, or accepted. Accepted
    configs are aimed at an existing run folder: refused (exit 1), the folder untouched."""
    def stop(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(sim_mod, "prepare", stop)
    out, files = existing_run
    code, err = run_cli(["run", "--quiet", "--out", str(out), "--set", f"{key}={value}"], capsys)
    assert_clean_failure(code, err)
    assert code in (1, 2), "an accepted config must still refuse to overwrite the run"
    if code == 1:
        assert "--force" in err
    for name, data in files.items():
        assert (out / name).read_bytes() == data


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_config_file_gives_a_clean_outcome(data, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sim_mod, "prepare", lambda *a, **k: (_ for _ in ()).throw(Accepted()))
    cfg = tmp_path / "exp.toml"
    cfg.write_bytes(data)
    code, err = run_cli(["run", "--quiet", "--force", "--out", str(tmp_path / "r"), "--config", str(cfg)], capsys)
    assert_clean_failure(code, err)


@FAST
@given(data=st.binary(max_size=400), keep=st.integers(0, 2000))
def test_a_damaged_checkpoint_is_one_clear_error(data, keep, capsys, tmp_path):
    """A checkpoint cut short or overwritten with junk: --resume says so; it never crashes."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.toml").write_text("rounds = 2\n")
    ckpt = run / sim_mod.CHECKPOINT
    if not hasattr(test_a_damaged_checkpoint_is_one_clear_error, "good"):
        import torch

        buf = io.BytesIO()
        torch.save({"round": 1, "server": {"w": torch.zeros(3)}, "state": {"round": 1}, "clients": {}}, buf)
        test_a_damaged_checkpoint_is_one_clear_error.good = buf.getvalue()
    good = test_a_damaged_checkpoint_is_one_clear_error.good
    ckpt.write_bytes(good[:keep] + data if keep < len(good) else data)
    sim = sim_mod.Simulator.__new__(sim_mod.Simulator)
    sim.out = run
    with pytest.raises(AdamodalError, match=r"checkpoint\.pt: (unreadable checkpoint|no checkpoint)"):
        sim.restore()


@FAST
@given(data=st.binary(max_size=2000), cut=st.integers(0, 5000))
def test_a_damaged_feature_cache_is_never_trusted(data, cut, tmp_path):
    """Random bytes, or a real cache file cut anywhere: loaded only if whole and finite."""
    from adamodal.towers.features import _load_cached

    good = io.BytesIO()
    np.save(good, np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32))
    path = tmp_path / "feat.npy"
    for blob in (data, good.getvalue()[:cut]):
        path.write_bytes(blob)
        arr = _load_cached(path, (20, 16))
        assert arr is None or (arr.shape == (20, 16) and np.isfinite(arr).all())


@FAST
@given(data=st.binary(max_size=600))
def test_damaged_data_files_raise_data_errors_only(data, tmp_path):
    """The existing loaders' parsers on junk: a result or a DataError naming the file."""
    from adamodal.data._orange_tab import parse_tab
    from adamodal.data.emoji import _read_png
    from adamodal.data.fmnist import read_idx

    idx = tmp_path / "train-labels-idx1-ubyte.gz"
    png = tmp_path / "1f600.png"
    for path, blob in ((idx, gzip.compress(data)), (idx, data), (png, data)):
        path.write_bytes(blob)
        try:
            (read_idx if path is idx else _read_png)(path)
        except DataError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
    try:
        parse_tab(data.decode("utf-8", "replace"), "junk.tab")
    except DataError as exc:
        assert str(exc).startswith("junk.tab: ")
    # a valid header followed by junk rows
    try:
        parse_tab("text\tcategory\nstring\td\n\tclass\n" + data.decode("latin-1"), "junk.tab")
    except DataError as exc:
        assert str(exc).startswith("junk.tab: ")


@pytest.mark.slow
@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=st.sampled_from(["local", "fedavg", "fedprox", "fedavg_group", "adamodal"]),
    extra=st.lists(st.sampled_from([
        "batch_size=1", "batch_size=100000", "lr=1e6", "lr=1e-12", "missing.image=0.9", "missing.text=0.9",
        "participation=0.2", "aggregation=median", "aggregation=trimmed:0.3", "dp.noise=5", "dp.clip=1e-9",
        "min_clients=5", "max_update_norm=1e-9", "max_payload_mb=1e-6", "client_timeout=1e-9",
        "partition=classes", "partition.classes=1", "partition.alpha=1e-3", "split.val=0.9", "model.dim=1",
        "local_epochs=0", "rounds=0", "eval.max_rows=1", "optimizer=sgd", "momentum=0.99",
    ]), max_size=4, unique=True),
)
def test_real_tiny_runs_end_cleanly(method, extra, capsys, tmp_path_factory):
    """Real (tiny) runs with hostile but valid settings: they finish, or stop with one line
    (e.g. every client's update rejected: below min_clients), exit 1; never a traceback."""
    out = tmp_path_factory.mktemp("fuzzrun")
    code, err = run_cli(["run", "--quiet", "--force", "--out", str(out), "--set", *SMALL, f"method={method}", *extra], capsys)
    assert_clean_failure(code, err)
    if code == 0:
        assert (out / "summary.json").exists()


def test_a_gzip_that_lies_is_a_data_error(tmp_path):
    """zlib errors are not OSErrors: a corrupt deflate stream must still name the file."""
    from adamodal.data.fmnist import read_idx

    blob = bytearray(gzip.compress(b"\x00\x00\x08\x01" + bytes(4) + b"x" * 5000))
    blob[20:40] = zlib.compress(b"junk")[:20]
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        read_idx(path)


def test_a_run_whose_every_update_is_rejected_stops_cleanly(capsys, tmp_path):
    """max_update_norm below any real update: every reply is dropped, the run stops after
    round 0 with one line (exit 1) and stays resumable."""
    out = tmp_path / "run"
    code, err = run_cli(["run", "--quiet", "--out", str(out), "--set", *SMALL, "method=fedavg",
                         "max_update_norm=1e-9"], capsys)
    assert code == 1, err
    assert "only 0 of 5 clients" in err and "update norm" in err and f"--resume {out}" in err
    assert (out / sim_mod.CHECKPOINT).exists() and not (out / "summary.json").exists()
