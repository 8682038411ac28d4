"""Flower's SuperNode authentication. Between real processes on 127.0.0.1: a SuperLink with
TLS admits the SuperNode whose public key was registered with it and refuses one with a key
of its own that nobody registered, and one without a key (which tries to register itself).
Without processes: the keys load with Flower's own loaders, the command lines carry the flags."""

from __future__ import annotations

import stat
import subprocess
import time

import pytest

from adamodal.cli import main
from adamodal.errors import ConfigError
from adamodal.flower.certs import make_certificates
from adamodal.flower.localhost import Consortium, free_port
from adamodal.flower.processes import flower_env, list_nodes, superlink_command, supernode_command


def test_node_keys_are_what_flower_reads_and_the_private_half_is_closed(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert main(["flower", "keys", str(tmp_path / "site")]) == 0
    assert "adamodal flower register" in capsys.readouterr().out
    private = load_ssh_private_key((tmp_path / "site" / "node.key").read_bytes(), None)  # as flower-supernode
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    # `flwr supernode register` accepts the public half, and it is the private key's
    assert try_load_public_key(tmp_path / "site" / "node.pub") == public_key_to_bytes(private.public_key())
    assert stat.S_IMODE((tmp_path / "site" / "node.key").stat().st_mode) == 0o600
    assert main(["flower", "keys", str(tmp_path / "site")]) == 1  # a registered key is never replaced silently
    assert "--force" in capsys.readouterr().err


def test_authentication_is_on_with_tls_and_needs_it(tmp_path, capsys):
    make_certificates(tmp_path, [], 1)
    link = superlink_command(host="127.0.0.1", port=1, certificates=tmp_path, insecure=False)
    assert "--enable-supernode-auth" in link
    assert "--enable-supernode-auth" not in superlink_command(host="127.0.0.1", port=1, certificates=tmp_path,
                                                              insecure=False, node_auth=False)
    assert "--enable-supernode-auth" not in superlink_command(host="127.0.0.1", port=1, certificates=None, insecure=True)
    with pytest.raises(ConfigError, match="needs TLS"):
        superlink_command(host="127.0.0.1", port=1, certificates=None, insecure=True, node_auth=True)
    # a site folder from `certs` brings its key; --node-key names another one
    node = supernode_command(superlink="h:1", client_id=0, data=None, certificates=tmp_path / "node_0", insecure=False)
    assert node[node.index("--auth-supernode-private-key") + 1] == str((tmp_path / "node_0" / "node.key").resolve())
    with pytest.raises(ConfigError, match="--node-key .*missing.key: key file not found"):
        supernode_command(superlink="h:1", client_id=0, data=None, certificates=tmp_path, insecure=False,
                          key=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="needs TLS"):
        supernode_command(superlink="h:1", client_id=0, data=None, certificates=None, insecure=True,
                          key=tmp_path / "node_0" / "node.key")
    assert main(["flower", "register", str(tmp_path / "node_0" / "node.pub"), "--insecure"]) == 1
    # the private key given by mistake is refused before anything is sent
    assert main(["flower", "register", str(tmp_path / "node_0" / "node.key"), "--certificates", str(tmp_path)]) != 0
    assert "node.key: not an OpenSSH public key" in capsys.readouterr().err


@pytest.mark.slow
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
