"""Flower's SuperNode authentication between real processes on 127.0.0.1: a SuperLink with
TLS admits the SuperNode whose public key was registered with it and refuses one with a key
of its own that nobody registered, and one without a key (which tries to register itself)."""

from __future__ import annotations

import subprocess
import time

import pytest

from adamodal.flower.certs import make_certificates
from adamodal.flower.localhost import Consortium, free_port
from adamodal.flower.processes import flower_env, list_nodes, supernode_command

pytestmark = pytest.mark.slow


def test_only_supernodes_with_registered_keys_join(tmp_path):
    make_certificates(tmp_path / "certs", [], 0)
    # no message is sent, so Flower's own ClientApp handling (no warm runner to start) will do
    with Consortium(tmp_path / "c", certificates=tmp_path / "certs", clientapp="per-message") as c:
        assert c.authenticating  # on by default with TLS
        c.start_superlink()
        c.start_supernodes([0])  # its public key is registered first
        (intruder,) = c.start_supernodes([1], register=False)  # a key pair nobody registered
        # no key at all: Flower's SuperNode tries to register itself with a fresh one
        cmd = supernode_command(superlink=c.address, client_id=2, data=None, certificates=c.certificates,
                                insecure=False, port=free_port(), clientapp="per-message")
        with open(tmp_path / "keyless.log", "wb") as log:
            keyless = subprocess.Popen(cmd, env=flower_env(tmp_path / "home2"), cwd=tmp_path, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        c.procs["keyless"] = keyless  # stopped with the others should it not exit
        assert intruder.wait(timeout=300) != 0
        assert "Failed to activate SuperNode" in (c.root / "supernode1.log").read_text()
        assert keyless.wait(timeout=300) != 0
        assert "All SuperNodes must be registered" in (tmp_path / "keyless.log").read_text()

        # the SuperLink knows exactly one node, the registered one, and it is online
        deadline = time.monotonic() + 120
        while True:
            nodes = {int(n["node-id"]): n["status"] for n in list_nodes(superlink=c.address,
                                                                         certificates=c.certificates, insecure=False)}
            if nodes.get(c.registered[0]) == "online" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert nodes == {c.registered[0]: "online"}
        assert c.procs["supernode0"].poll() is None
