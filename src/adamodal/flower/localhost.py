"""A whole consortium on one machine: a SuperLink and one SuperNode per client, on free
ports of 127.0.0.1, started and stopped together (tests, benchmarks, trying things out).

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
from adamodal.flower.processes import flower_env, superlink_command, supernode_command


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
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def insecure(self) -> bool:
        return self.certificates is None

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
                                insecure=self.insecure, simulation=self.simulation)
        wait_port(self.port, self._start("superlink", cmd), self.root / "superlink.log")

    def start_supernode(self, client_id: int, data: Path | None = None) -> subprocess.Popen:
        return self.start_supernodes([client_id], data)[0]

    def start_supernodes(self, client_ids: list[int], data: Path | None = None) -> list[subprocess.Popen]:
        """Start one SuperNode per client id, all at once, and wait until each listens."""
        started = []
        for cid in client_ids:
            port = free_port()
            cmd = supernode_command(superlink=self.address, client_id=cid, data=data,
                                    certificates=self.certificates, insecure=self.insecure, port=port,
                                    state=self.root / f"state{cid}", clientapp=self.clientapp)
            started.append((cid, port, self._start(f"supernode{cid}", cmd)))
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
