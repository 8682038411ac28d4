"""Real Flower processes on 127.0.0.1: a SuperLink and three SuperNodes (image+text,
image-only, text-only), started and stopped by the tests, Flower homes in tmp; TLS with
SuperNode authentication (each node's key registered) unless a test says ``--insecure``.

Equivalence: the Flower runtime runs the simulator's own server loop and the engine's own
client functions with the same per-(seed, round, client, phase) seeds, and messages convert
to Flower records losslessly, so the final metrics are expected to be *equal*; the tolerance
(1e-6) only allows for floating-point noise. Bytes differ by the ``.npy`` headers Flower's
arrays carry (at most 128 bytes per array per message).
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from adamodal.cache import cache_dir
from adamodal.cli import main
from adamodal.config import resolve
from adamodal.flower.certs import make_certificates
from adamodal.flower.localhost import Consortium
from adamodal.flower.processes import submit
from adamodal.runtime.simulator import CHECKPOINT, Simulator, prepare

pytestmark = pytest.mark.slow

TINY = {
    "clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1, "data.max_items": 300,
    "rounds": 2, "partition": "iid", "local_epochs": 1, "device": "cpu", "seed": 0, "eval.max_rows": 300,
}
TOL = 1e-6
#: a phase's wait for a silent (killed) SuperNode; well above a normal phase (a few seconds on an
#: idle 2-core machine, up to ~45 s measured under a load average of 10)
TIMEOUT = 60.0
#: the kill test waits this long for the killed node in each of its two runs; a phase of this
#: 3-client job takes 1-5 s on an idle 2-core machine (the ClientApps run warm)
# a round-1 task on a loaded 2-core machine (three SuperNodes and another test file) took up
# to 12.3 s: the timeout that tells a killed site from a slow one needs the margin
KILL_TIMEOUT = 30.0


def _submit(c: Consortium, cfg, out: Path, timeout: float = TIMEOUT, **kw):
    return submit(cfg, out, superlink=c.address, certificates=c.certificates, insecure=c.insecure,
                  timeout=timeout, wait=60, poll_s=0.5, log=lambda s: None, **kw)


def _reference(cfg, out: Path) -> dict:
    return Simulator(prepare(cfg, progress=False), out, progress=False).run()


def _assert_same_metrics(dep: dict, ref: dict) -> None:
    assert dep["groups"].keys() == ref["groups"].keys()
    for g, m in ref["groups"].items():
        for k in ("macro_auc", "accuracy", "macro_f1"):
            assert dep["groups"][g][k] == pytest.approx(m[k], abs=TOL), (g, k)
    for cond, m in ref["test"].items():
        for k, v in m.items():
            assert dep["test"][cond][k] == pytest.approx(v, abs=TOL), (cond, k)


@pytest.fixture(scope="module")
def tls_consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium")
    make_certificates(root / "certs", [], 3)
    with Consortium(root, certificates=root / "certs") as c:
        assert c.authenticating  # TLS brings SuperNode authentication: the nodes' keys are registered
        c.start_superlink()
        c.start_supernodes([0, 1, 2], data=cache_dir())
        yield c


@pytest.mark.parametrize("method", ["fedavg", "adamodal"])
def test_tls_deployment_completes_and_matches_the_simulator(tls_consortium, tmp_path, method):
    cfg = resolve({}, {**TINY, "method": method, "eval.every": 2})  # evaluated before and after
    result = _submit(tls_consortium, cfg, tmp_path / "flower")
    assert result.ok, (result, (tmp_path / "flower" / "error.txt").read_text() if (tmp_path / "flower" / "error.txt").exists() else "")
    dep = json.loads((tmp_path / "flower" / "summary.json").read_text())
    ref = _reference(cfg, tmp_path / "ref")
    assert [h["round"] for h in dep["history"]] == [0, 2]
    assert dep["dropped"] == []
    assert set(dep["groups"]) == {"multimodal", "image_only", "text_only"}
    _assert_same_metrics(dep, ref)
    # bytes counted from the Flower records: the same payload plus .npy headers
    # Flower frames each array (name, dtype, shape): 1-2% more for int8 uploads, two arrays a parameter
    assert ref["bytes_up"] < dep["bytes_up"] < ref["bytes_up"] * 1.02
    assert ref["bytes_down"] < dep["bytes_down"] < ref["bytes_down"] * 1.01


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: the 4th field of stat, after the name)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_in_round_2(c: Consortium, out: Path, name: str, sig: int, run: Future | None = None) -> None:
    """Kill a SuperNode (and its ClientApp) as soon as round 1 is checkpointed (the metrics of
    round 1 are written with its checkpoint). If the run ends first (``run``, its future), it
    failed before round 2: say so at once instead of waiting out the deadline."""
    deadline = time.monotonic() + 600
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and '"round": 1,' in metrics.read_text()):
        assert time.monotonic() < deadline, "round 1 never finished"
        assert run is None or not run.done(), f"the run ended before round 2: {run.result()}"
        time.sleep(0.1)
    c.kill(name, sig)


def test_killed_supernode_drops_out_or_fails_the_run_per_min_clients(tmp_path, capsys):
    with Consortium(tmp_path / "c") as c, ThreadPoolExecutor(1) as pool:
        c.start_superlink()
        c.start_supernodes([0, 1, 2])
        # a hard crash (SIGKILL) of the text-only site in round 2, min_clients=2: the run goes on
        cfg = resolve({}, {**TINY, "min_clients": 2})
        out = tmp_path / "allowed"
        run = pool.submit(_submit, c, cfg, out, KILL_TIMEOUT)
        _kill_in_round_2(c, out, "supernode2", signal.SIGKILL, run)
        result = run.result(timeout=900)
        assert result.ok, result
        summary = json.loads((out / "summary.json").read_text())
        assert summary["dropped"] and {d["client"] for d in summary["dropped"]} == {2}
        assert {d["round"] for d in summary["dropped"]} == {2}
        assert "text_only" not in summary["groups"]  # it was not there to be evaluated
        assert summary["history"][1]["groups"].keys() == {"multimodal", "image_only", "text_only"}

        # the site comes back, then goes down again in round 2 with min_clients=3: the run fails,
        # `adamodal flower run` says why and exits non-zero, the round-1 checkpoint stays
        c.start_supernode(2)
        out = tmp_path / "required"
        args = ["flower", "run", "--superlink", c.address, "--insecure", "--out", str(out),
                "--timeout", str(KILL_TIMEOUT), "--wait", "60", "--quiet", "--set",
                *[f"{k}={v}" for k, v in TINY.items()], "min_clients=3"]
        code = pool.submit(main, args)
        _kill_in_round_2(c, out, "supernode2", signal.SIGTERM, code)
        assert code.result(timeout=900) == 1
        err = capsys.readouterr().err
        assert "finished:failed" in err and "min_clients=3" in err and "client 2" in err
        assert (out / CHECKPOINT).exists() and not (out / "summary.json").exists()

        # a site whose Flower SuperNode process dies stops as a whole: the warm ClientApp
        # runner exits with it (so a service manager restarts the site), code 137 for SIGKILL
        site = c.procs["supernode1"]
        supernode = _children(site.pid)
        assert len(supernode) == 1, supernode
        os.kill(supernode[0], signal.SIGKILL)
        assert site.wait(timeout=60) == 137


def test_simulation_with_virtual_supernodes_matches_the_simulator(tmp_path):
    cfg = resolve({}, {**TINY, "method": "fedavg"})
    with Consortium(tmp_path / "c", simulation=True) as c:
        c.start_superlink()
        result = _submit(c, cfg, tmp_path / "flower", simulation=True)
    assert result.ok, result
    dep = json.loads((tmp_path / "flower" / "summary.json").read_text())
    _assert_same_metrics(dep, _reference(cfg, tmp_path / "ref"))


def test_a_failed_run_is_reported_as_failed(tmp_path, capsys):
    with Consortium(tmp_path / "c") as c:
        c.start_superlink()
        c.start_supernode(5)  # a site configured as a client the scenario does not have
        args = ["flower", "run", "--superlink", c.address, "--insecure", "--out", str(tmp_path / "out"),
                "--wait", "2", "--timeout", str(TIMEOUT), "--set", *[f"{k}={v}" for k, v in TINY.items()],
                "clients.image_only=0", "clients.text_only=0"]
        assert main(args) == 1
    err = capsys.readouterr().err
    assert "finished:failed" in err and "client-id 5 is not in the scenario" in err
