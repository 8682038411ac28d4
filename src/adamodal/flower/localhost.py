"""A whole consortium on one machine: a SuperLink and one SuperNode per client, on free
ports of 127.0.0.1, started and stopped together (tests, benchmarks, trying things out).

With TLS the SuperLink authenticates SuperNodes (Flower's SuperNode authentication, as in a
real consortium): each SuperNode gets a key pair of its own under ``ROOT/keys/``, and its public
key is registered with the SuperLink before the SuperNode starts.

Every process gets its own process group so stopping it also stops the ServerApp/ClientApp
processes Flower started under it, and a Flower home folder of its own so nothing touches
``~/.flwr``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from adamodal.errors import AdamodalError
from adamodal.flower.certs import NODE_KEY, NODE_PUB, make_node_keys
from adamodal.flower.processes import (
    flower_env,
    register_nodes,
    superlink_command,
    supernode_command,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AdamodalError(f"process exited with code {proc.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AdamodalError(f"nothing listens on port {port} after {timeout:g} s; see {log}")


@dataclass
class Consortium:
    """Processes of a local consortium; use as a context manager."""

    root: Path
    certificates: Path | None = None
    simulation: bool = False
    #: how SuperNodes run their ClientApp (see ``supernode_command``)
    clientapp: str = "warm"
    #: Flower's SuperNode authentication (default: on with TLS, off without or in a simulation)
    node_auth: bool | None = None
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: the node id the SuperLink gave each registered client's key, by client id
    registered: dict[int, int] = field(default_factory=dict)

    @property
    def insecure(self) -> bool:
        return self.certificates is None

    @property
    def authenticating(self) -> bool:
        return (not self.insecure and not self.simulation) if self.node_auth is None else self.node_auth

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        home = self.root / "flwr" / name
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(cmd, env=flower_env(home), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                cwd=home, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        cmd = superlink_command(host="127.0.0.1", port=self.port, certificates=self.certificates,
                                insecure=self.insecure, simulation=self.simulation, node_auth=self.authenticating)
        wait_port(self.port, self._start("superlink", cmd), self.root / "superlink.log")

    def start_supernode(self, client_id: int, data: Path | None = None) -> subprocess.Popen:
        return self.start_supernodes([client_id], data)[0]

    def node_key(self, client_id: int) -> Path:
        """The private key of the SuperNode of ``client_id`` (made on first use)."""
        folder = self.root / "keys" / f"node{client_id}"
        return folder / NODE_KEY if (folder / NODE_KEY).exists() else make_node_keys(folder)[0]

    def register(self, client_ids: list[int]) -> None:
        """Register the public keys of these clients' SuperNodes with the SuperLink (once each)."""
        new = [cid for cid in dict.fromkeys(client_ids) if cid not in self.registered]
        keys = {cid: self.node_key(cid).with_name(NODE_PUB) for cid in new}
        if keys:
            if self.certificates is None:
                raise AdamodalError("SuperNode authentication needs TLS: give the consortium certificates")
            ids = register_nodes(list(keys.values()), superlink=self.address, certificates=self.certificates)
            self.registered.update({cid: ids[pub] for cid, pub in keys.items()})

    def start_supernodes(self, client_ids: list[int], data: Path | None = None,
                         register: bool = True) -> list[subprocess.Popen]:
        """Start one SuperNode per client id, all at once, and wait until each listens.

        ``register=False`` (with authentication) starts nodes whose keys the SuperLink does not
        know: it refuses them and they exit, so nothing is waited for."""
        if self.authenticating and register:
            self.register(client_ids)
        started = []
        for cid in client_ids:
            port = free_port()
            cmd = supernode_command(superlink=self.address, client_id=cid, data=data,
                                    certificates=self.certificates, insecure=self.insecure, port=port,
                                    state=self.root / f"state{cid}", clientapp=self.clientapp,
                                    key=self.node_key(cid) if self.authenticating else None)
            started.append((cid, port, self._start(f"supernode{cid}", cmd)))
        if register or not self.authenticating:
            for cid, port, proc in started:
                wait_port(port, proc, self.root / f"supernode{cid}.log", timeout=300)
        return [proc for _, _, proc in started]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a process and everything it started (a site going down hard)."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        """Stop every process: all are asked at once, then waited for (each may take seconds
        to shut down cleanly), and killed when one does not stop within 15 s."""
        running = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for proc in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> Consortium:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
