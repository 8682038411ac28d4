"""A consortium on 127.0.0.1 with site-local data, as the README's walkthrough runs it: a
SuperLink and three SuperNodes started with ``adamodal flower superlink/supernode`` (TLS and
SuperNode authentication: each site's key registered with ``adamodal flower register``),
each site's SuperNode given only its own folder (site 0 image+text, site 1 images only,
site 2 texts only), the server only ``server/`` holding ``test/``.

Isolation is checked, not assumed: every Python process of the consortium runs an audit hook
(``tests/flower/audit/sitecustomize.py``) that logs each file or folder it opens under the
data root; the server's processes (SuperLink, ServerApp) must have opened the server's test
set and nothing of any site, and each site's processes only their own folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adamodal.cli import main
from adamodal.flower.certs import NODE_PUB, make_certificates, make_node_keys
from adamodal.flower.localhost import Consortium, free_port, wait_port
from tests.flower.sites import SITE_RUN, warm_caches, write_consortium
from tests.flower.test_deploy import _kill_in_round_2

pytestmark = pytest.mark.slow

AUDIT = Path(__file__).parent / "audit"
#: a phase's wait for a silent (killed) site: well above a phase of this job (1-5 s on an idle
#: 2-core machine, up to 12 s measured under a load average of 15)
KILL_TIMEOUT = 20.0


def adamodal_command(*args: str, cache: Path) -> list[str]:
    """``adamodal ARGS`` as a process with its own data cache (each site its own)."""
    return ["env", f"ADAMODAL_CACHE={cache}", sys.executable, "-m", "adamodal.cli", *args]


def security_args(c: Consortium) -> list[str]:
    """The security flags every command of the consortium takes (one place to add more)."""
    return ["--certificates", str(c.certificates)] if c.certificates is not None else ["--insecure"]


def start_superlink(c: Consortium, root: Path) -> None:
    cmd = adamodal_command("flower", "superlink", *security_args(c), "--port", str(c.port), cache=root / "cache-server")
    wait_port(c.port, c._start("superlink", cmd), c.root / "superlink.log")


def register_sites(c: Consortium, root: Path, keys: list[Path]) -> None:
    """``adamodal flower register`` of the sites' public keys, as the operator runs it."""
    cmd = adamodal_command("flower", "register", *[str(k) for k in keys], "--superlink", c.address,
                           *security_args(c), cache=root / "cache-server")
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0


def start_site(c: Consortium, root: Path, cid: int, data: Path, key: Path) -> None:
    port = free_port()
    cmd = adamodal_command("flower", "supernode", *security_args(c), "--node-key", str(key),
                           "--client-id", str(cid), "--data", str(data),
                           "--superlink", c.address, "--port", str(port), "--state", str(root / f"state{cid}"),
                           cache=root / f"cache-site{cid}")
    wait_port(port, c._start(f"supernode{cid}", cmd), c.root / f"supernode{cid}.log")


def flower_run(c: Consortium, out: Path, server: Path, *overrides: str, timeout: float = 60.0) -> int:
    """``adamodal flower run`` exactly as the walkthrough has it (plus the test's quick settings)."""
    sets = [f"{k}={v}" for k, v in SITE_RUN.items()] + [f"folder.root={server}", *overrides]
    return main(["flower", "run", *security_args(c), "--superlink", c.address, "--out", str(out),
                 "--timeout", str(timeout), "--wait", "60", "--set", *sets])


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium")
    data = root / "data"
    sites, server = write_consortium(data)
    audit = root / "audit"
    audit.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", f"{AUDIT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    mp.setenv("ADAMODAL_AUDIT_WATCH", str(data))
    mp.setenv("ADAMODAL_AUDIT_DIR", str(audit))
    make_certificates(root / "certs", [], 3)
    t0 = time.monotonic()
    warm_caches([(site, root / f"cache-site{k}") for k, site in enumerate(sites)]
                + [(server / "test", root / "cache-server")])
    with Consortium(root / "procs", certificates=root / "certs") as c:
        start_superlink(c, root)
        keys = [make_node_keys(root / "keys" / f"site{cid}")[0] for cid in range(len(sites))]
        register_sites(c, root, [k.with_name(NODE_PUB) for k in keys])
        for cid, site in enumerate(sites):
            start_site(c, root, cid, site, keys[cid])
        print(f"\nfeatures cached and consortium up in {time.monotonic() - t0:.1f} s")
        yield c, sites, server, audit
    mp.undo()


def _opened(audit: Path) -> dict[str, set[str]]:
    """Paths opened under the data root, per side: ``server`` or ``siteK``."""
    seen: dict[str, set[str]] = {}
    for log in audit.glob("*.log"):
        lines = log.read_text().splitlines()
        heads = [x for x in lines if x.startswith("# ")]
        m = next((re.search(r"client-id[= ](\d+)", h) for h in heads if re.search(r"client-id[= ](\d+)", h)), None)
        side = f"site{m.group(1)}" if m else "server"
        seen.setdefault(side, set()).update(x for x in lines if not x.startswith("# "))
    return seen


def _assert_isolated(audit: Path, sites: list[Path], server: Path) -> None:
    opened = _opened(audit)
    assert any(p.startswith(str(server / "test")) for p in opened.get("server", ())), opened.keys()
    assert not [p for p in opened["server"] if p.startswith(str(sites[0].parent))]
    for k, site in enumerate(sites):
        mine = opened[f"site{k}"]
        assert any(p.startswith(str(site)) for p in mine)
        assert all(p == str(site) or p.startswith(f"{site}/") for p in mine), sorted(mine)[:5]


def test_adamodal_on_sites_with_only_their_own_data(consortium, tmp_path, capsys):
    c, sites, server, audit = consortium
    t0 = time.monotonic()
    assert flower_run(c, tmp_path / "run", server, "method=adamodal", "eval.every=2") == 0
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nadamodal: `adamodal flower run` took {took:.1f} s\n{out}")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["clients"] == {"multimodal": 1, "image_only": 1, "text_only": 1}
    assert set(summary["groups"]) == {"multimodal", "image_only", "text_only"}
    assert set(summary["test"]) == {"both", "image", "text"} and summary["groups_server_test"] == {}
    assert summary["dropped"] == [] and [h["round"] for h in summary["history"]] == [0, 2]
    assert summary["test"]["both"]["macro_auc"] > summary["history"][0]["test"]["both"]["macro_auc"] + 0.1
    assert "server test (both)" in out and "text-only" in out
    # the run's config names the server's folder, never a site's
    assert str(sites[0].parent) not in (tmp_path / "run" / "config.toml").read_text()
    _assert_isolated(audit, sites, server)


def test_fedavg_goes_on_when_a_site_is_killed_in_round_2(consortium, tmp_path, capsys):
    """The walkthrough's fedavg run; the text-only site dies hard (SIGKILL) in round 2 and
    min_clients=2 lets the other two finish the run."""
    c, sites, server, audit = consortium
    out = tmp_path / "run"
    t0 = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(flower_run, c, out, server, "method=fedavg", "min_clients=2", timeout=KILL_TIMEOUT)
        _kill_in_round_2(c, out, "supernode2", signal.SIGKILL, run)
        assert run.result(timeout=600) == 0
    took = time.monotonic() - t0
    text = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nfedavg, site 2 killed in round 2: `adamodal flower run` took {took:.1f} s\n{text}")
    summary = json.loads((out / "summary.json").read_text())
    assert {(d["round"], d["client"]) for d in summary["dropped"]} == {(2, 2)}
    assert "no reply within" in summary["dropped"][0]["reason"]
    # round 1: every site, each group on its own test split, and the server's test set
    assert set(summary["history"][1]["groups"]) == {"multimodal", "image_only", "text_only"}
    assert "text_only" not in summary["groups"]  # it was not there to be evaluated
    assert set(summary["test"]) == {"both", "image", "text"}
    assert summary["test"]["both"]["macro_auc"] > summary["history"][0]["test"]["both"]["macro_auc"] + 0.1
    assert "server test (both)" in text and "image-only" in text
    _assert_isolated(audit, sites, server)
