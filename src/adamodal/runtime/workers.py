"""The clients of a phase in parallel worker processes (``workers``), with the results of
running them one after another.

:class:`WorkerClients` hands each worker process a fixed share of the clients once, at start:
their data and server-test views, a method instance of its own (one model per worker, reused
for its clients) and, from then on, their persisted state. A phase's messages are split by
worker, every worker runs :class:`~adamodal.runtime.clients.InProcessClients` on its share
(the same seeds, the same failure and timeout handling, the same evaluation), and the replies
come back in the clients' order. So ``workers=N`` gives exactly what ``workers=1`` gives as
long as every worker uses the same number of torch threads as the in-process run (``threads``,
1 by default): only where a client runs changes, never what it computes.

Starting workers costs seconds (a fork server that imports torch, see
:mod:`adamodal.runtime.pool`) and a copy of the clients' data, so ``workers=0`` (automatic, the
default) starts them only when the work still to come is worth it: the run begins in process,
and once the clients' measured time (looked at after every client, so that the workers start
during the first long phase) projects at least :data:`AUTO_MIN_REMAINING_S` seconds of
client work in the remaining rounds and at least two cores are idle (:func:`idle_cores`; on a
busy machine workers were measured to gain nothing), one worker per idle core starts in the
background while the run goes on in process; it moves to them at the first phase after all of them are ready (the clients'
state goes along). On a GPU, or with ``batch_clients``, the automatic choice is no workers:
the clients share one device, whose faster path is batching.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.methods.base import Message, Method
from adamodal.runtime.clients import ClientData, ClientEval, ClientFailure, InProcessClients
from adamodal.runtime.pool import Pool, WorkerError  # noqa: F401 - WorkerError: what a caller catches

#: ``workers=0``: start the workers once the remaining client work, projected from the seconds
#: the clients took so far, reaches this (chosen by measurement: docs/performance.md, "Workers")
AUTO_MIN_REMAINING_S = 20.0


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, all cores summed, from
    ``/proc/stat`` (steal counts as busy: a core the hypervisor took is not ours); None where
    there is no such file."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        ticks = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
        per_s = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
    if parts[0] != "cpu" or len(ticks) < 8:
        return None
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / per_s, sum(ticks) / per_s


#: the last reading :func:`idle_cores` measured from: (wall, machine busy s, machine total s,
#: this process's CPU s); the first is taken when this module loads, at the start of a run
_last_reading: tuple[float, float, float, float] | None = None


def _reading() -> tuple[float, float, float, float] | None:
    machine = _machine_cpu_s()
    return None if machine is None else (time.monotonic(), *machine, time.process_time())


_last_reading = _reading()


def idle_cores() -> int:
    """The available cores that other work left idle since the last call (or since this run
    began): measured from the machine's CPU counters minus this process's own CPU time, so a
    job that just ended does not count (the 1-minute load average, used where there are no
    such counters or less than half a second has passed, still counts it for minutes). This
    process's own busy core counts as idle: it waits while the workers run."""
    global _last_reading
    now = _reading()
    prev, _last_reading = _last_reading, now
    cores = available_cores()
    if prev is not None and now is not None and now[0] - prev[0] >= 0.5 and now[2] > prev[2]:
        machine_cores = os.cpu_count() or cores
        busy = (now[1] - prev[1]) / (now[2] - prev[2]) * machine_cores  # cores busy, on average
        own = (now[3] - prev[3]) / (now[0] - prev[0])
        return max(1, min(cores, int(cores - max(busy - own, 0.0) + 0.5)))
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return cores
    return max(1, int(cores - max(load - 1.0, 0.0) + 0.5))


def resolve_workers(cfg: dict[str, Any], device: torch.device, n_clients: int) -> tuple[int, bool]:
    """(worker processes, whether they start only when the work is large enough).

    ``workers=0`` (automatic): at most one per available core on the CPU, started on demand
    (as many as are idle then, see :meth:`WorkerClients._account`); none on
    a GPU or with ``batch_clients`` (one device, whose fast path is batching). ``workers=N``:
    N from the first phase (``workers=1``: in process)."""
    n = int(cfg.get("workers", 1))
    batched = int(cfg.get("batch_clients", 0)) > 1
    if n == 0:
        if device.type != "cpu" or batched:
            return 1, False
        return max(1, min(available_cores(), n_clients)), True
    if n > 1 and batched:
        raise ConfigError(f"workers={n} and batch_clients={cfg['batch_clients']}: choose one way to run "
                          "clients together (workers=1 to batch, batch_clients=0 for workers)")
    return max(1, min(n, n_clients)), False


def local_clients(method: Method, clients: list[ClientData], server_views: dict[int, Tensors],
                  server_tests: dict[str, Tensors], spec, cfg, device: torch.device, *,
                  progress: bool = False) -> InProcessClients:
    """The simulator's clients as ``workers`` asks: in process, or in worker processes."""
    n, auto = resolve_workers(cfg, device, len(clients))
    if n == 1:
        return InProcessClients(method, clients, server_views, server_tests, spec, cfg, device, progress=progress)
    return WorkerClients(method, clients, server_views, server_tests, spec, cfg, device,
                         workers=n, auto=auto, progress=progress)


def assign(clients: list[ClientData], n: int) -> list[list[int]]:
    """Client ids per worker, balanced by training rows (largest first to the least loaded
    worker), fixed for the run so that each client's state stays in one worker."""
    loads, shares = [0] * n, [[] for _ in range(n)]
    for c in sorted(clients, key=lambda c: (-len(c.train), c.cid)):
        i = min(range(n), key=lambda j: (loads[j], j))
        loads[i] += max(len(c.train), 1)
        shares[i].append(c.cid)
    return [sorted(s) for s in shares]


class WorkerClients(InProcessClients):
    """Clients in ``workers`` processes; in this process until the workers are in use (and
    again after :meth:`close`). Memory: the data once more (each worker holds its clients'
    rows) plus one model per worker, not per client."""

    def __init__(self, method: Method, clients: list[ClientData], server_views: dict[int, Tensors],
                 server_tests: dict[str, Tensors], spec, cfg, device: torch.device, *, workers: int,
                 auto: bool = False, progress: bool = False) -> None:
        super().__init__(method, clients, server_views, server_tests, spec, cfg, device, progress=progress)
        self.workers, self.auto = workers, auto
        self.infos = list(method.clients.values())
        self.pool: Pool | None = None
        self.in_use = False
        #: whether a phase waits for workers still starting (else this process runs its clients
        #: meanwhile, and the workers take the rest once ready)
        self.wait_for_workers = False
        self.client_s = 0.0  # seconds of client work done in process (auto mode)
        self.rounds_seen: set[int] = set()
        self.local_calls = self.worker_calls = 0  # phases and evaluations run here / in the workers
        self.next_look = 0.0  # when the automatic mode may next look at the machine's idle cores
        self.clients_timed = 0
        if not auto:
            self.start()

    def start(self) -> None:
        """Start the workers in the background, each with its share of the clients' data."""
        shares = [s for s in assign(list(self.clients.values()), self.workers) if s]
        threads = int(self.cfg["threads"]) or max(1, available_cores() // len(shares))
        payloads = [{
            "cfg": self.cfg, "spec": self.spec, "infos": self.infos, "device": self.device,
            "threads": threads, "clients": [self.clients[cid] for cid in share],
            "views": {cid: self.server_views[cid] for cid in share},
        } for share in shares]
        self.pool = Pool(shares, payloads)

    def _pool_ready(self) -> bool:
        """Move to the workers once all are ready (waiting for them only under ``wait_for_workers``)."""
        if self.in_use:
            return True
        if self.pool is None or not self.pool.ready(block=self.wait_for_workers):
            return False
        self._send_state(self.states)
        self.states, self.in_use = {}, True
        return True

    def _account(self, rnd: int, seconds: float) -> None:
        """Automatic mode, after a phase: start the workers when the remaining work projects
        large enough."""
        self.client_s += seconds
        if rnd > 0:
            self.rounds_seen.add(rnd)
        self._maybe_start(self.client_s / max(len(self.rounds_seen), 1) * (int(self.cfg["rounds"]) - rnd))

    def client_done(self, rnd: int, seconds: float, phase_clients: int) -> None:
        """Automatic mode, after each client in process: a phase whose clients each take this
        long, in every round still to come, is worth workers, which then start while the
        phase goes on here (deciding only after the phase came too late for runs of few, long
        rounds: the workers were not ready before the last round began)."""
        self.clients_timed += 1
        if rnd > 0 and self.clients_timed > 1:  # the first pays one-time costs (imports, allocation)
            self._maybe_start(seconds * phase_clients * (int(self.cfg["rounds"]) - rnd + 1))

    def _maybe_start(self, remaining_s: float) -> None:
        if not (self.auto and self.pool is None and remaining_s >= AUTO_MIN_REMAINING_S):
            return
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + 1.0  # idle_cores measures since its last call: give it time
        # workers only help on idle cores: on a busy machine they add start-up and messages
        # for no speed (measured: docs/performance.md, "Workers"); look again later
        idle = min(self.workers, idle_cores())
        if idle >= 2:
            self.workers = idle
            self.start()

    def _in_process(self, rnd: int, work: Callable[[], Any]) -> Any:
        """Run ``work`` (a phase or an evaluation) here, timed for the automatic mode."""
        self.local_calls += 1
        t0 = time.perf_counter()
        out = work()
        self._account(rnd, time.perf_counter() - t0)
        return out

    def step(self, phase: str, rnd: int, p_idx: int, messages: dict[int, Message]) -> dict[int, Message | ClientFailure]:
        """The phase in the workers once they are ready. While they start, this process works
        through the phase's clients itself, one at a time, and hands the rest over as soon as
        they are ready: a client's reply does not depend on where it ran, and the start-up
        (about 3 s of round 1 on the Fashion-MNIST job) no longer leaves this process idle."""
        replies: dict[int, Message | ClientFailure] = {}
        left = dict(messages)
        while left and not self._pool_ready():
            # one client at a time while workers start; with none coming yet (automatic mode), the rest
            take = list(left) if self.pool is None else [next(iter(left))]
            chunk = {cid: left.pop(cid) for cid in take}
            replies.update(self._in_process(rnd, lambda chunk=chunk: InProcessClients.step(self, phase, rnd, p_idx, chunk)))
        if left:
            self.worker_calls += 1
            what = f"round {rnd} {phase}"
            replies.update(self.pool.call("step", left, lambda i, msgs: (phase, rnd, p_idx, msgs), what,
                                          float(self.cfg.get("client_timeout", 0.0) or 0.0), self._bar(what, len(left))))
        return {cid: replies[cid] for cid in messages}

    def evaluate(self, rnd: int, messages: dict[int, Message], server_tests: bool) -> dict[int, ClientEval]:
        return self.begin_evaluate(rnd, messages, server_tests)()

    def begin_evaluate(self, rnd: int, messages: dict[int, Message],
                       server_tests: bool) -> Callable[[], dict[int, ClientEval]]:
        """In the workers: sent now, collected by the returned function (the server scores its
        model in between, on a core the workers leave idle while it does). In process, also
        while the workers are still starting (an evaluation does not wait for them: it gives
        the same numbers here): run when called, after the server's scoring, as
        :class:`InProcessClients` does."""
        starting = self.pool is not None and not self.in_use and not self.pool.ready(block=False)
        if starting or not self._pool_ready():
            return lambda: self._in_process(rnd, lambda: InProcessClients.evaluate(self, rnd, messages, server_tests))
        self.worker_calls += 1
        pool = self.pool

        def args(i: int, msgs: dict[int, Message]) -> tuple:
            tests = None
            if server_tests and not pool.has_tests[i]:  # the server's whole test set: once, when first needed
                tests, pool.has_tests[i] = self.server_tests, True
            return rnd, msgs, tests, server_tests

        what = f"round {rnd} evaluation"
        collect = pool.submit("evaluate", messages, args, what, progress=self._bar(what, len(messages)))

        def merged() -> dict[int, ClientEval]:
            replies = collect()
            return {cid: replies[cid] for cid in messages}
        return merged

    def _bar(self, desc: str, total: int) -> Callable[[int], None] | None:
        if not self.progress:
            return None
        bar = tqdm(total=total, desc=desc, leave=False, unit="client")

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    def _send_state(self, state: dict[int, dict[str, np.ndarray]]) -> None:
        shares = self.pool.shares
        self.pool.broadcast("load_state", lambda i: {c: state[c] for c in shares[i] if c in state}, "loading client state")

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        if not self.in_use:
            return super().state()
        merged: dict[int, dict[str, np.ndarray]] = {}
        for part in self.pool.broadcast("state", lambda i: None, "fetching client state"):
            merged.update(part)
        return dict(sorted(merged.items()))

    def load_state(self, state: dict[int, dict[str, np.ndarray]]) -> None:
        if self._pool_ready():
            self._send_state(state)
        else:
            super().load_state(state)

    def close(self) -> None:
        """Stop the workers, bringing the clients' state back here first (a worker that died,
        or a run interrupted mid-phase, leaves it to the run's last checkpoint)."""
        if self.pool is None:
            return
        try:
            if self.in_use and not self.pool.closed and not self.pool.busy:
                self.states = self.state()
        finally:
            self.pool.close()
            self.pool, self.in_use = None, False
