"""The client side of a run, behind the one interface the server loop drives.

The server loop (:class:`~adamodal.runtime.simulator.Simulator`) never calls a method's client
code itself: it hands a :class:`Clients` the messages of one phase and gets replies back. The
in-process implementation below runs the clients one after another in this process; the Flower
runtime implements the same interface with ``grid.send_and_receive``, and its ClientApp calls
the same two functions (:func:`client_step`, :func:`evaluate_client`) on the SuperNode. So the
algorithm code, the seeds and the evaluation are identical under both runtimes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from adamodal.kit.tensors import Tensors
from adamodal.kit.train import predict
from adamodal.methods.base import ClientContext, Message, Method
from adamodal.metrics import compute_metrics, metric_stats
from adamodal.runtime.validate import check_incoming


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (seed, round, client, phase): every random draw of a run
    depends only on where it happens, so a resumed run (or a client on another machine) draws
    exactly what the original in-process run did."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class ClientData:
    """One client's data, as tensors: what a SuperNode holds."""

    cid: int
    group: str
    modalities: tuple[str, ...]
    train: Tensors
    val: Tensors
    test: Tensors


@dataclass(frozen=True)
class ClientFailure:
    """A client that gave no usable reply this phase, and why (logged and counted)."""

    reason: str


@dataclass
class ClientEval:
    """What a client reports after evaluating, never a row's score or label: its model's
    metrics on its own test split (exact, computed where the rows are), the sufficient
    statistics (:func:`~adamodal.metrics.metric_stats`: counts summed over rows) of its own
    test split and of the server's test set seen with its modalities and vendor, which the
    server adds up per group, and, when asked, its model's metrics on the server's test set
    (methods with no server model). Plain numbers and numpy arrays, so it pickles and travels
    as Flower records."""

    metrics: dict[str, float]
    stats: dict[str, np.ndarray]
    server_stats: dict[str, np.ndarray]
    test_metrics: dict[str, dict[str, float]] | None = None


def client_step(method: Method, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
    """Run one phase on one client with the phase's seed set for torch's global generator,
    after checking the server's message (well-formed, finite)."""
    check_incoming(msg)
    torch.manual_seed(ctx.seed)
    return method.client_step(phase, rnd, ctx, msg)


def model_fingerprint(model: torch.nn.Module, keep: list[object] | None = None) -> str:
    """A digest of everything a model's predictions can depend on: its class, parameters and
    buffers, and the plain attributes of each submodule (flags, unregistered tensors). An
    attribute that is a dataclass, dict, list or tuple of those is taken by content; one of any
    other type is taken by identity (and appended to ``keep``, so that its
    id cannot be reused by another object while the digest is in use): two models are only
    ever judged equal when they certainly predict the same."""
    # SHA-256: hardware-accelerated on current CPUs, twice blake2b's speed on a model's MBs
    h = hashlib.sha256(type(model).__qualname__.encode())

    def add_tensor(label: str, t: torch.Tensor) -> None:
        h.update(f"{label}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())

    def add_value(v: object) -> None:
        if isinstance(v, torch.Tensor):
            add_tensor("", v)
        elif isinstance(v, np.ndarray):
            h.update(f"{v.dtype}:{v.shape}".encode())
            h.update(np.ascontiguousarray(v).view(np.uint8))
        elif v is None or isinstance(v, (bool, int, float, str)):
            h.update(repr(v).encode())
        elif isinstance(v, dict) and all(isinstance(k, str) for k in v):
            h.update(f"dict{len(v)}(".encode())
            for k in sorted(v):
                h.update(f"{k}=".encode())
                add_value(v[k])
            h.update(b")")
        elif isinstance(v, (list, tuple)):
            h.update(f"{type(v).__name__}{len(v)}(".encode())
            for x in v:
                add_value(x)
            h.update(b")")
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            # plain data (e.g. a method's knowledge rebuilt for every client): equal by content
            h.update(f"{type(v).__qualname__}(".encode())
            for f in dataclasses.fields(v):
                h.update(f"{f.name}=".encode())
                add_value(getattr(v, f.name))
            h.update(b")")
        else:
            h.update(f"{type(v).__qualname__}@{id(v)}".encode())
            if keep is not None:
                keep.append(v)

    for name, t in model.state_dict().items():
        add_tensor(name, t)
    for mod_name, mod in model.named_modules():
        for k, v in sorted(vars(mod).items()):
            if k.startswith("_"):
                continue  # parameters, buffers, hooks: covered above or not state
            h.update(f"{mod_name}.{k}=".encode())
            add_value(v)
    return h.hexdigest()


class PredictionMemo:
    """Scores of one model on one data set, computed once per evaluation.

    Under FedAvg-like methods every client holds the same global model, and clients with the
    same modalities and image domain see the same server-test view, so without this the
    server view (most of an evaluation's rows) would be scored once per client. Keyed by
    :func:`model_fingerprint` and the data object; kept only for one evaluation."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, int, str], np.ndarray] = {}
        self._keep: list[object] = []  # objects keyed by id() stay alive while the memo is
        self.hits = 0

    def fingerprint(self, model: torch.nn.Module) -> str:
        return model_fingerprint(model, self._keep)

    def predict(self, fingerprint: str, model: torch.nn.Module, data: Tensors, task: str) -> np.ndarray:
        key = (fingerprint, id(data), task)
        if key in self._scores:
            self.hits += 1
        else:
            self._scores[key] = predict(model, data, task)
            self._keep.append(data)
        return self._scores[key]


def evaluate_client(method: Method, ctx: ClientContext, msg: Message, server_view: Tensors,
                    server_tests: dict[str, Tensors] | None = None,
                    memo: PredictionMemo | None = None) -> ClientEval:
    """Score a client's model on its own test split and on the server test view and reduce the
    scores to metrics and summed statistics here, on the client (with ``memo``, a model
    already scored on the same data is not scored again)."""
    task, num_classes = ctx.spec.task, ctx.spec.num_classes
    model = method.client_model(ctx, msg)
    if memo is None:
        def score(data: Tensors) -> np.ndarray:
            return predict(model, data, task)
    else:
        fingerprint = memo.fingerprint(model)

        def score(data: Tensors) -> np.ndarray:
            return memo.predict(fingerprint, model, data, task)
    test_metrics = None
    if server_tests is not None:
        test_metrics = {cond: compute_metrics(score(data), data.y.numpy(), task)
                        for cond, data in server_tests.items()}
    own, y = score(ctx.test), ctx.test.y.numpy()
    return ClientEval(
        metrics=compute_metrics(own, y, task), stats=metric_stats(own, y, task, num_classes),
        server_stats=metric_stats(score(server_view), server_view.y.numpy(), task, num_classes),
        test_metrics=test_metrics,
    )


class Clients(ABC):
    """Where the clients run: in this process, or on Flower SuperNodes."""

    @abstractmethod
    def step(self, phase: str, rnd: int, p_idx: int, messages: dict[int, Message]) -> dict[int, Message | ClientFailure]:
        """Deliver one phase's messages and collect each client's reply (or why it gave none)."""

    @abstractmethod
    def evaluate(self, rnd: int, messages: dict[int, Message], server_tests: bool) -> dict[int, ClientEval]:
        """Have every client evaluate its model; ``server_tests`` asks for server-test metrics too."""

    def begin_evaluate(self, rnd: int, messages: dict[int, Message],
                       server_tests: bool) -> Callable[[], dict[int, ClientEval]]:
        """:meth:`evaluate` as a function to call for its result. Clients that run elsewhere
        (worker processes) start at once, so the server can score its own model meanwhile;
        by default nothing starts before the call (clients in this process may share the
        server's model instance)."""
        return lambda: self.evaluate(rnd, messages, server_tests)

    def nbytes(self, msg: Message) -> int:
        """Bytes ``msg`` costs on this runtime's wire (in process: :meth:`Message.nbytes`)."""
        return msg.nbytes()

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Client state the server checkpoints (none when clients keep their own)."""
        return {}

    def load_state(self, state: dict[int, dict[str, np.ndarray]]) -> None:  # noqa: B027 - optional
        """Inverse of :meth:`state`."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the clients hold (worker processes) once the run is over."""


def failure_reason(exc: BaseException) -> str:
    """``"raised ValueError: message"``, on one line and of bounded length, for the log."""
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}: {text[:300]}" if text else f"raised {type(exc).__name__}"


class InProcessClients(Clients):
    """All clients in this process, one after another, one model instance in memory.

    A client whose step raises an exception gives a :class:`ClientFailure` naming it, and its
    persisted state stays what it was before the step (the step works on a copy of the state
    dict, committed only on success). ``client_timeout`` (seconds, 0 = none) is enforced by
    measuring: a reply that took longer is dropped as late, like one a real server stopped
    waiting for. A thread cannot be killed safely in Python, so a client that never returns
    still blocks the in-process run; the Flower runtime, where clients are other processes,
    bounds the wait itself.
    """

    #: the clock the timeout is measured with (tests substitute a fake one)
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, method: Method, clients: list[ClientData], server_views: dict[int, Tensors],
                 server_tests: dict[str, Tensors], spec, cfg, device: torch.device, *, progress: bool = False) -> None:
        self.method = method
        self.clients = {c.cid: c for c in clients}
        self.server_views = server_views
        self.server_tests = server_tests
        self.spec, self.cfg, self.device = spec, cfg, device
        self.progress = progress
        self.states: dict[int, dict[str, np.ndarray]] = {}

    def context(self, cid: int, seed: int) -> ClientContext:
        c = self.clients[cid]
        return ClientContext(
            cid=cid, group=c.group, modalities=c.modalities, train=c.train, val=c.val, test=c.test,
            spec=self.spec, cfg=self.cfg, seed=seed, device=self.device, state=self.states.get(cid, {}),
        )

    def step(self, phase: str, rnd: int, p_idx: int, messages: dict[int, Message]) -> dict[int, Message | ClientFailure]:
        replies: dict[int, Message | ClientFailure] = {}
        size = int(self.cfg["batch_clients"])
        cids = list(messages)
        if size > 1:  # many clients per computation, when the method can (else one by one)
            for first in range(0, len(cids), size):
                chunk = cids[first:first + size]
                ctxs = [self.context(cid, derive_seed(self.cfg["seed"], rnd, cid, p_idx)) for cid in chunk]
                for cid in chunk:
                    check_incoming(messages[cid])
                torch.manual_seed(derive_seed(self.cfg["seed"], rnd, chunk[0], p_idx))
                out = self.method.client_steps(phase, rnd, ctxs, [messages[cid] for cid in chunk])
                if out is None:
                    break
                for ctx, reply in zip(ctxs, out, strict=True):
                    replies[ctx.cid] = reply
                    self.states[ctx.cid] = ctx.state
        todo = [cid for cid in cids if cid not in replies]
        bar = tqdm(todo, desc=f"round {rnd} {phase}", leave=False, disable=not self.progress, unit="client")
        timeout = float(self.cfg.get("client_timeout", 0.0) or 0.0)
        for cid in bar:
            ctx = self.context(cid, derive_seed(self.cfg["seed"], rnd, cid, p_idx))
            ctx.state = dict(ctx.state)  # a failed step must not leave half-updated state behind
            start = self.clock()
            try:
                reply = client_step(self.method, phase, rnd, ctx, messages[cid])
            except Exception as exc:  # noqa: BLE001 - any client error drops only that client
                if os.environ.get("ADAMODAL_DEBUG"):
                    raise  # developers see the traceback of a failing client step
                replies[cid] = ClientFailure(failure_reason(exc))
                continue
            took = self.clock() - start
            if timeout > 0 and took > timeout:
                replies[cid] = ClientFailure(f"timeout: replied after {took:.1f} s > client_timeout={timeout:g} s")
                continue
            replies[cid] = reply
            self.states[cid] = ctx.state
            self.client_done(rnd, took, len(todo))
        return {cid: replies[cid] for cid in cids}

    def client_done(self, rnd: int, seconds: float, phase_clients: int) -> None:  # noqa: B027 - optional
        """Called after each client's step in this process (``seconds`` it took, of a phase of
        ``phase_clients``): a hook for deciding on parallel workers early."""

    def evaluate(self, rnd: int, messages: dict[int, Message], server_tests: bool) -> dict[int, ClientEval]:
        # clients holding the same model score a shared view once
        memo = PredictionMemo() if bool(self.cfg.get("eval.share_predictions", True)) else None
        return {
            cid: evaluate_client(self.method, self.context(cid, 0), msg, self.server_views[cid],
                                 self.server_tests if server_tests else None, memo)
            for cid, msg in messages.items()
        }

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        return self.states

    def load_state(self, state: dict[int, dict[str, np.ndarray]]) -> None:
        self.states = dict(state)
