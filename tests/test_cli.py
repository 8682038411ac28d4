"""The command line end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SMALL = ["clients.multimodal=3", "clients.image_only=1", "clients.text_only=1", "rounds=2", "partition=iid"]


def adamodal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adamodal.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = adamodal("run", "--set", *SMALL, "method=fedavg", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fedavg" and summary["rounds"] == 2
    assert summary["test"]["both"]["macro_auc"] > 0.75  # 9 classes: chance is 0.5
    for name in ("config.toml", "metrics.jsonl", "history.png"):
        assert (out / name).stat().st_size > 0
    assert "image+text" in r.stdout  # the per-group table
    # a second run into the same folder is refused, and the first is intact
    before = (out / "summary.json").read_text()
    again = adamodal("run", "--set", *SMALL, "--out", str(out), "--quiet")
    assert again.returncode == 1 and "--force" in again.stderr
    assert (out / "summary.json").read_text() == before


def test_the_fast_exit_keeps_exit_codes_and_output():
    """The command skips the interpreter's teardown (``cli.entry``): exit codes and every line
    of output must survive it, for a normal return, argparse's own exits and an exception."""
    helped = adamodal("--help")
    assert helped.returncode == 0 and "usage: adamodal" in helped.stdout
    assert adamodal("run", "--no-such-flag").returncode == 2
    listed = adamodal("methods")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) >= 10 and listed.stdout.endswith("\n")
    env = {**os.environ, "ADAMODAL_DEBUG": "1"}  # the error escapes main(): a traceback and code 1
    crashed = subprocess.run([sys.executable, "-m", "adamodal.cli", "run", "--set", "lr=fast"], capture_output=True,
                             text=True, timeout=120, env=env)
    assert crashed.returncode == 1 and "Traceback" in crashed.stderr


def test_config_file_and_set(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('method = "fedprox"\nrounds = 7\n[clients]\nmultimodal = 4\n')
    r = adamodal("config", "--config", str(cfg), "--set", "rounds=9")
    assert r.returncode == 0, r.stderr
    assert 'method = "fedprox"' in r.stdout and "rounds = 9" in r.stdout and '"clients.multimodal" = 4' in r.stdout


def test_unknown_key_lists_the_valid_ones():
    r = adamodal("run", "--set", "roundz=3")
    assert r.returncode == 2
    assert "roundz" in r.stderr and "rounds" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_values_are_one_line_errors():
    for setting, words in [("dataset=cifar", "emoji"), ("method=fedsgd", "fedavg"), ("lr=fast", "lr"),
                           ("partition=zipf", "dirichlet"), ("participation=1.5", "participation")]:
        r = adamodal("run", "--set", setting)
        assert r.returncode == 2, (setting, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, (setting, r.stderr)


def test_impossible_scenario_is_a_clear_error(tmp_path):
    r = adamodal("run", "--set", "dataset=fmnist", "--out", str(tmp_path / "x"), "--quiet")
    assert r.returncode == 1
    assert "clients.multimodal=0" in r.stderr and "Traceback" not in r.stderr
    r = adamodal("run", "--set", "clients.multimodal=5000", "--out", str(tmp_path / "y"), "--quiet")
    assert r.returncode == 1 and "clients" in r.stderr and "Traceback" not in r.stderr


def test_data_info():
    r = adamodal("data", "info", "emoji")
    assert r.returncode == 0, r.stderr
    assert "1852" in r.stdout and "apple" in r.stdout and "image_only" in r.stdout


def test_methods_listed():
    r = adamodal("methods")
    assert r.returncode == 0
    for name in ("local", "central", "fedavg", "fedavg_group", "fedprox"):
        assert name in r.stdout


def test_a_closed_pipe_is_not_a_traceback():
    import subprocess
    import sys

    cmd = f"{sys.executable} -m adamodal.cli methods | head -1"
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("adamodal") and "Traceback" not in out.stderr
