"""The method contract, driven identically by the in-process simulator and the Flower runtime.

A round is a list of *phases*. In each phase the server builds one :class:`Message` per
participating client (:meth:`Method.configure`), each client answers with a Message
(:meth:`Method.client_step`), and the server consumes the answers (:meth:`Method.aggregate`).
One phase is one ``grid.send_and_receive`` in Flower, so a method whose round needs two
exchanges (summaries up, fusion down, then training) just declares two phases. Messages carry
only named numpy arrays and a few scalars; the engine counts their bytes.

Client-side code sees only its own :class:`ClientContext` (its data, its persisted state and
the message); server-side code sees only messages and :class:`ClientInfo`. Neither can reach
the other's memory, which is what makes the same file run under Flower.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adamodal.devices import resolve_device

# re-exported: methods aggregate with these, and the contract is where a method author looks
from adamodal.kit.aggregation import (  # noqa: F401
    AGGREGATIONS,
    aggregate_arrays,
    parse_aggregation,
    weighted_average,
)
from adamodal.kit.tensors import Tensors
from adamodal.model import ModelSpec, build_model

Scalar = int | float | str | bool


@dataclass
class Message:
    """Named arrays plus small scalars: everything that crosses the network."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, Scalar] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes on the wire, counted the same way for every method: raw array bytes plus
        the scalars serialised as JSON."""
        arrays = sum(int(np.asarray(a).nbytes) for a in self.arrays.values())
        scalars = len(json.dumps(self.scalars, sort_keys=True).encode()) if self.scalars else 0
        return arrays + scalars


@dataclass(frozen=True)
class ArraySpec:
    """What the server expects one reply array to look like (checked before aggregation).

    ``shape`` entries of ``None`` accept any length on that axis (e.g. a number of centroids).
    """

    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype string, e.g. "float32"

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        a = np.asarray(array)
        return cls(tuple(int(d) for d in a.shape), a.dtype.name)


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a client: declared when the client joins, not its data."""

    cid: int
    group: str  # "multimodal" | "image_only" | "text_only"
    modalities: tuple[str, ...]
    num_train: int


@dataclass
class ClientContext:
    """Everything a client computes with. Lives on the client; never sent anywhere."""

    cid: int
    group: str
    modalities: tuple[str, ...]
    train: Tensors
    val: Tensors
    test: Tensors
    spec: ModelSpec
    cfg: dict[str, Any]
    seed: int
    device: torch.device
    #: named arrays the client keeps between rounds (personal parameters, optimizer-free)
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


class Method(ABC):
    """One federated (or baseline) algorithm. Subclasses live one per file in ``methods/``.

    Lifecycle on the server: ``__init__`` -> (``set_public`` when ``split.public > 0``) ->
    ``init_server`` -> for each round: for each phase
    in ``phases(rnd)``: ``participants`` -> ``configure`` -> (clients run ``client_step``) ->
    ``aggregate``; then ``end_round``. Evaluation uses ``eval_message`` (server) and
    ``client_model`` (client), and ``global_model`` for the server's test set.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: extra config keys of this method (``"<method>.<key>": default``)
    config_defaults: ClassVar[dict[str, Any]] = {}
    #: True when clients send raw inputs (only ``central``, which is not federated)
    moves_raw_data: ClassVar[bool] = False
    #: the inputs this method's model can use: cached frozen-tower ``features`` and/or ``raw``
    #: inputs for small trainable towers (``towers=small``)
    input_kinds: ClassVar[tuple[str, ...]] = ("features", "raw")
    #: True when the method cannot run without the server's public paired set (``split.public``)
    needs_public: ClassVar[bool] = False
    #: a run's rough cost relative to FedAvg's on the same scenario (measured on the emoji
    #: demo); only used to start the longest runs first when several go in parallel
    relative_cost: ClassVar[float] = 1.0

    def __init__(self, cfg: dict[str, Any], spec: ModelSpec, clients: list[ClientInfo]) -> None:
        self.cfg = cfg
        self.spec = spec
        self.clients = {c.cid: c for c in clients}
        self.seed = int(cfg["seed"])
        self.device = resolve_device(str(cfg["device"]))
        self._model: nn.Module | None = None

    # ---- shared helpers -------------------------------------------------------------
    def model(self) -> nn.Module:
        """One reusable model instance per process (memory O(model), not O(clients x model));
        callers always load the weights they need into it first."""
        if self._model is None:
            self._model = build_model(self.spec, self.seed).to(self.device)
        return self._model

    def initial_params(self) -> dict[str, np.ndarray]:
        """The seed's initial weights, identical on every machine."""
        return state_arrays(build_model(self.spec, self.seed))

    # ---- server side ----------------------------------------------------------------
    def set_public(self, public: Tensors) -> None:  # noqa: B027 - optional hook
        """The server's public paired set (image + text + labels of every item, ``split.public``
        of the identity groups, held out from every client and from the server's test set),
        handed over by the runtime before :meth:`init_server` when ``split.public > 0``. Being
        public, whatever a method derives from it may go to the clients. Ignored by default."""

    def init_server(self) -> None:  # noqa: B027 - optional hook
        """Create the server's initial state (e.g. global parameters)."""

    def phases(self, rnd: int) -> list[str]:
        """Names of this round's exchanges, in order."""
        return ["train"]

    def participants(self, phase: str, rnd: int, sampled: list[int]) -> list[int]:
        """Clients asked in this phase; by default the round's sample (participation)."""
        return sampled

    @abstractmethod
    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        """The message each participating client receives."""

    @abstractmethod
    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        """Consume the clients' replies (clients that failed are simply absent)."""

    def end_round(self, rnd: int) -> None:  # noqa: B027 - optional hook
        """Server-side work after the round's phases (e.g. central training)."""

    def round_metrics(self, rnd: int) -> dict[str, float]:
        """Server-side numbers about this round's work that a reader should see next to the
        accuracy (e.g. AdaModal-Fed's gate values and imputation quality), recorded in
        ``metrics.jsonl`` and the run's history. Aggregates only; empty by default."""
        return {}

    def server_state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume the server, as named arrays (checkpointed each round)."""
        return {}

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027
        """Inverse of :meth:`server_state`."""

    def reply_schema(self, phase: str, rnd: int, cid: int, sent: Message) -> dict[str, ArraySpec] | None:
        """The arrays a valid reply to ``sent`` holds, exactly (names, shapes, dtypes).

        ``None`` (the default) lets the server derive the expectation (see
        :mod:`adamodal.runtime.validate`): a reply array named like a sent array must match it,
        and other arrays must agree with the other clients of the phase. Methods that know
        their replies exactly (FedAvg: the model back) return them here.
        """
        return None

    def shares_per_sample(self) -> bool:
        """True when this configuration sends raw inputs or per-sample tensors off a client by
        design (``central``; AdaModal-Fed with ``share=embeddings``). The privacy test holds
        every other method and mode to summaries and parameters only."""
        return self.moves_raw_data

    def privacy_report(self, rounds: int) -> dict[str, Any] | None:
        """The differential-privacy guarantee of what this run released, or None when no
        mechanism is on (written to ``summary.json`` as ``privacy``)."""
        return None

    def eval_message(self, cid: int) -> Message:
        """What the server sends a client so it can evaluate (default: nothing)."""
        return Message()

    def global_model(self) -> nn.Module | None:
        """The server's model for the global test set, or None if the method has none."""
        return None

    # ---- client side ----------------------------------------------------------------
    @abstractmethod
    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        """Run one phase on one client; may update ``ctx.state``; returns the reply."""

    def client_steps(self, phase: str, rnd: int, ctxs: list[ClientContext], msgs: list[Message]) -> list[Message] | None:
        """Several clients' phase at once, when they run in one process (``batch_clients``).

        Returns one reply per client, or None when this method (or this phase) trains clients
        one at a time. A method that batches must give the replies :meth:`client_step` would
        give, up to float rounding and random draws. The Flower runtime never calls this.
        """
        return None

    @abstractmethod
    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        """The model this client predicts with, given its state and the eval message."""


# ---- parameter helpers used by the methods ----------------------------------------------

def state_arrays(model: nn.Module, prefixes: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """A model's parameters and buffers as numpy copies, optionally only some modules."""
    out = {}
    for k, v in model.state_dict().items():
        if prefixes is None or k.startswith(prefixes):
            out[k] = v.detach().cpu().numpy().copy()
    return out


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Load (a subset of) named arrays into ``model`` in place."""
    if not arrays:
        return model
    current = model.state_dict()
    unknown = [k for k in arrays if k not in current]
    if unknown:
        raise KeyError(f"arrays not in the model: {unknown[:5]}")
    with torch.no_grad():
        for k, a in arrays.items():
            current[k].copy_(torch.as_tensor(a))
    return model
