"""Worker processes that each serve a fixed share of the in-process clients
(:class:`~adamodal.runtime.workers.WorkerClients` drives them).

A worker is started from a ``forkserver`` that has imported torch once (``spawn`` where there
is none; plain ``fork`` of a process that has used torch is unsafe), and so costs a fork, not
a Python start with torch's import: the first optimizer a process builds imports
``torch._dynamo`` (~3 s on this project's machine) and the first AUC ``scipy.stats``, which
the fork server preloads too (:data:`adamodal.runtime.forkserver.PRELOAD`; a run that asks
for ``workers=N`` starts the fork server before its own imports). A
background thread starts the workers and sends each its clients' data, so the main process
goes on with the run meanwhile. Every worker then answers requests on its pipe with
:class:`~adamodal.runtime.clients.InProcessClients` over its own clients.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from adamodal.errors import AdamodalError
from adamodal.methods import get_method_class
from adamodal.runtime.clients import InProcessClients
from adamodal.runtime.forkserver import context

#: with ``client_timeout``, a worker gets its clients' timeouts plus this before it counts as hung
HANG_GRACE_S = 60.0


class WorkerError(AdamodalError):
    """A worker process died, hung, or could not start: the run cannot go on."""


class _Procs:
    """The processes and pipes, shared by the pool, its start-up thread and its finalizer
    (which must not hold the pool itself)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: list[Any] = []  # started processes, in worker order
        self.conns: list[Connection] = []
        self.peers: list[Connection] = []  # the workers' ends, closed here once they have them
        self.stopping = False
        self.starter: threading.Thread | None = None
        self.error: BaseException | None = None


def _start(procs: _Procs, ctx: Any, payloads: list[dict[str, Any]]) -> None:
    """Start every worker, then send each its data (the worker reads it once it has started)."""
    try:
        for i in range(len(payloads)):
            proc = ctx.Process(target=serve, args=(procs.peers[i],), name=f"adamodal-worker-{i}", daemon=True)
            proc.start()
            procs.peers[i].close()  # now only the worker holds its end: its death closes our pipe
            with procs.lock:
                if procs.stopping:
                    proc.kill()
                    return
                procs.procs.append(proc)
        for i, payload in enumerate(payloads):
            procs.conns[i].send_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # noqa: BLE001 - reported by the pool when it is next used
        procs.error = exc


def _stop(procs: _Procs, polite: bool) -> None:
    """Stop the workers (they hold nothing to save); also run when the pool is collected.
    ``polite``: idle workers see their pipe close and exit; any still busy after 5 s, or all
    when not polite, are terminated."""
    with procs.lock:
        procs.stopping = True
        started = list(procs.procs)
    starting = procs.starter is not None and procs.starter.is_alive()
    if polite and not starting:
        for conn in procs.conns:
            conn.close()
    else:
        for p in started:
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in started:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)
    if not starting:
        for conn in procs.conns:
            conn.close()


class Pool:
    """Worker processes, one per share of client ids; requests go to all, replies are awaited
    together with the processes' exit, so a dead worker is an error, never a wait."""

    def __init__(self, shares: list[list[int]], payloads: list[dict[str, Any]]) -> None:
        ctx = context()
        self.shares = shares
        self.worker_of = {cid: i for i, share in enumerate(shares) for cid in share}
        self.is_ready = [False] * len(shares)
        self.has_tests = [False] * len(shares)
        self.closed = False
        #: a request is out whose replies were not all read (interrupted): the pipes are out of step
        self.busy = False
        self.procs = _Procs()
        for _ in shares:
            mine, theirs = ctx.Pipe()
            self.procs.conns.append(mine)
            self.procs.peers.append(theirs)
        self.closer = weakref.finalize(self, _stop, self.procs, False)
        self.procs.starter = threading.Thread(target=_start, args=(self.procs, ctx, payloads),
                                              name="adamodal-workers-start", daemon=True)
        self.procs.starter.start()

    # ---- replies and failures -----------------------------------------------------------
    def _died(self, i: int, what: str) -> WorkerError:
        proc = self.procs.procs[i]
        proc.join(1.0)
        code = proc.exitcode
        how = (f"was killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
               if code is not None and code < 0 else f"exited with code {code}")
        self.close(polite=False)
        return WorkerError(f"worker process {i} (clients {_ids(self.shares[i])}) {how} during {what}; the run "
                           "stopped, its last checkpoint is kept (continue with --resume; workers=1 runs the "
                           "clients in the main process)")

    def _recv(self, i: int, what: str) -> Any:
        try:
            kind, value = pickle.loads(self.procs.conns[i].recv_bytes())
        except (EOFError, OSError):
            raise self._died(i, what) from None
        if kind == "error":
            exc, trace = value
            exc.add_note(f"in worker process {i}:\n{trace}")
            self.close(polite=False)
            raise exc
        return value

    def _await(self, pending: set[int], what: str, deadline: float | None,
               on_reply: Callable[[int, Any], None]) -> None:
        conns, procs = self.procs.conns, self.procs.procs
        while pending:
            by_conn = {conns[i]: i for i in pending}
            by_sentinel = {procs[i].sentinel: i for i in pending}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = wait([*by_conn, *by_sentinel], left)
            if not got:
                i = min(pending)
                self.close(polite=False)
                raise WorkerError(f"worker process {i} (clients {_ids(self.shares[i])}) gave no reply to {what} "
                                  f"within its clients' client_timeout plus {HANG_GRACE_S:g} s: a client hangs; "
                                  "the run stopped, its last checkpoint is kept (continue with --resume)")
            done = {by_conn[o] for o in got if o in by_conn} | {by_sentinel[o] for o in got if o in by_sentinel}
            for i in sorted(done):
                on_reply(i, self._recv(i, what))  # a dead worker's pipe is closed: EOF
                pending.discard(i)

    def _check(self, what: str) -> None:
        if self.closed:
            raise WorkerError(f"the worker processes were stopped; cannot run {what}")
        if self.procs.error is not None:
            error = self.procs.error
            self.close(polite=False)
            raise WorkerError(f"the worker processes could not start: {type(error).__name__}: {error}") from error

    # ---- requests -----------------------------------------------------------------------
    def ready(self, block: bool) -> bool:
        """Whether every worker has its data and its method; never waits unless ``block``."""
        if all(self.is_ready):
            return True
        if not block and self.procs.starter.is_alive():
            return False
        self.procs.starter.join()
        self._check("start-up")
        pending = {i for i, r in enumerate(self.is_ready) if not r}
        if not block:  # only those that answered (or died): reading them cannot wait
            conns, procs = self.procs.conns, self.procs.procs
            pending = {i for i in pending if conns[i].poll(0) or not procs[i].is_alive()}
        self._await(pending, "start-up", None, lambda i, _: self.is_ready.__setitem__(i, True))
        return all(self.is_ready)

    def _send(self, i: int, kind: str, args: Any, what: str) -> None:
        self._check(what)
        try:
            self.procs.conns[i].send_bytes(pickle.dumps((kind, args), protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError):
            raise self._died(i, what) from None

    def call(self, kind: str, items: dict[int, Any], args: Callable[[int, dict[int, Any]], tuple],
             what: str, timeout: float = 0.0, progress: Callable[[int], None] | None = None) -> dict[int, Any]:
        """Send each worker the request for its clients' items (``args(worker, items)``), and
        merge the per-client dicts all of them return. ``timeout`` per client (0: none)."""
        return self.submit(kind, items, args, what, timeout, progress)()

    def submit(self, kind: str, items: dict[int, Any], args: Callable[[int, dict[int, Any]], tuple],
               what: str, timeout: float = 0.0,
               progress: Callable[[int], None] | None = None) -> Callable[[], dict[int, Any]]:
        """:meth:`call` in two halves: send the requests now, and return the function that
        waits for the replies and merges them, so the caller can work while the workers do."""
        split: dict[int, dict[int, Any]] = {}
        for cid, item in items.items():
            split.setdefault(self.worker_of[cid], {})[cid] = item
        self.busy = True
        for i, mine in split.items():
            self._send(i, kind, args(i, mine), what)
        longest = max((len(m) for m in split.values()), default=0)
        deadline = time.monotonic() + longest * timeout + HANG_GRACE_S if timeout > 0 else None
        merged: dict[int, Any] = {}

        def take(i: int, reply: dict[int, Any]) -> None:
            merged.update(reply)
            if progress is not None:
                progress(len(reply))

        def collect() -> dict[int, Any]:
            self._await(set(split), what, deadline, take)
            self.busy = False
            return merged

        return collect

    def broadcast(self, kind: str, args: Callable[[int], Any], what: str) -> list[Any]:
        """One request to every worker (``args(worker)``); their answers in worker order."""
        self.busy = True
        for i in range(len(self.shares)):
            self._send(i, kind, args(i), what)
        out: dict[int, Any] = {}
        self._await(set(range(len(self.shares))), what, None, out.__setitem__)
        self.busy = False
        return [out[i] for i in range(len(self.shares))]

    def close(self, polite: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self.closer.detach()
            _stop(self.procs, polite)


def _ids(cids: list[int]) -> str:
    return ", ".join(map(str, cids[:8])) + (f" and {len(cids) - 8} more" if len(cids) > 8 else "")


# ---- the worker's side ------------------------------------------------------------------

def _error(exc: BaseException) -> tuple[BaseException, str]:
    """The exception itself when it survives pickling (the main process raises the same
    type), else a RuntimeError naming it; with the worker's traceback."""
    trace = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc, trace
    except Exception:  # noqa: BLE001 - any unpicklable exception is reported by name
        return RuntimeError(f"{type(exc).__name__}: {exc}"), trace


def _reply(conn: Connection, kind: str, value: Any) -> bool:
    try:
        conn.send_bytes(pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL))
        return True
    except (OSError, ValueError):
        return False  # the main process is gone or stopped us: nothing to answer


def _handle(clients: InProcessClients, kind: str, args: Any) -> Any:
    if kind == "step":
        return clients.step(*args)
    if kind == "evaluate":
        rnd, messages, tests, want = args
        if tests is not None:
            clients.server_tests = tests
        return clients.evaluate(rnd, messages, want)
    if kind == "state":
        return clients.state()
    if kind == "load_state":
        clients.load_state(args)
        return None
    raise ValueError(f"unknown request {kind!r}")


def serve(conn: Connection) -> None:
    """A worker's life: read its clients' data, build the method, answer requests until its
    pipe closes (the main process stopped it, or is gone)."""
    from tqdm.auto import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops us
    tqdm.set_lock(threading.RLock())  # not a process-shared lock: nothing here draws a bar
    try:
        init = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    try:
        torch.set_num_threads(int(init["threads"]))
        cfg, spec = init["cfg"], init["spec"]
        method = get_method_class(cfg["method"])(cfg, spec, init["infos"])
        clients = InProcessClients(method, init["clients"], init["views"], {}, spec, cfg, init["device"])
        del init
    except BaseException as exc:  # noqa: BLE001 - reported to the main process, which raises it
        _reply(conn, "error", _error(exc))
        return
    if not _reply(conn, "ready", os.getpid()):
        return
    while True:
        try:
            kind, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            value = _handle(clients, kind, args)
        except BaseException as exc:  # noqa: BLE001 - reported to the main process, which raises it
            if not _reply(conn, "error", _error(exc)):
                return
            continue
        if not _reply(conn, "ok", value):
            return
