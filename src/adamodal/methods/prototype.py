"""Prototype imputation (in the spirit of PmcmFL and MFCPL): FedAvg of the whole model, where
a row's missing modality is filled with a class prototype of that modality instead of zeros.

Prototypes are per-class means of each modality's frozen-tower features (the model's inputs),
not of the representation after the projection: the tower features are fixed, so the class
means are exact after one exchange instead of chasing a space that moves every round and
differs between clients after local training, and a prototype enters the model exactly where
the missing input would, so the model stays plain FedAvg and its projection learns from the
prototype like from a real row.

Round 1 opens with a ``prototypes`` phase asking every client (not only the round's sample):
each uploads, per modality it holds, the per-class MEAN of its rows' features and the class
COUNT (aggregate statistics, never rows; the mean times the count is the class sum, and a
mean keeps the upload's norm independent of the client's size, so ``max_update_norm`` holds
it like any update). A class with fewer than ``prototype.min_count`` rows is not uploaded
(the mean of one row is that row). The server adds up sums and counts and broadcasts the
prototypes (count-weighted means) and which classes have one, with the model, every round.

Filling, for a row that has one modality and lacks the other:
- training: the label is known, so the missing modality is the prototype of the row's class;
  multi-label: the mean of the prototypes of its positive findings (unknown = not positive); a
  row with no positive finding that has a prototype stays zero-filled;
- prediction: the label is unknown, so the present modality's cosine similarity to its own
  class prototypes, softmax at ``prototype.temperature``, weights the missing modality's class
  prototypes (classes with a prototype in both modalities); multi-label uses the same softmax
  over findings (a mix weighted by how close the row is to each finding's prototype).
``prototype.impute=false`` skips all of it: plain FedAvg with zero-filled, masked slots.
Modality dropout (``fedavg.modality_dropout``) runs before the fill, so a hidden modality is
then filled from its class prototype.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import BatchTransform, compose
from adamodal.methods._fill import DIRECTIONS, FillingNet, features, put, to_fill, unit
from adamodal.methods.base import ArraySpec, ClientContext, Message, load_arrays
from adamodal.methods.fedavg import FedAvg


def class_statistics(data: Tensors, modality: str, num_classes: int, task: str,
                     min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of the rows that have ``modality`` and their count; classes with fewer
    than ``min_count`` rows get mean 0 and count 0 (they are not released)."""
    x, present = features(data, modality)
    assert x is not None
    member = _labels_matrix(data.y, num_classes, task) * present.double().unsqueeze(1)  # [n, C]
    counts = member.sum(0)
    sums = member.T @ x.double().reshape(len(data), -1)
    keep = counts >= max(1, min_count)
    means = torch.where(keep.unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1), torch.zeros_like(sums))
    return means.float().numpy(), torch.where(keep, counts, 0).round().long().numpy()


def _labels_matrix(y: torch.Tensor, num_classes: int, task: str) -> torch.Tensor:
    """[n, C] 0/1: the row's class (multi-class) or its positive findings (NaN = not positive)."""
    if task == "multilabel":
        return (torch.nan_to_num(y.double(), nan=0.0) > 0.5).double()
    return torch.nn.functional.one_hot(y.long(), num_classes).double()


def label_fill(protos: dict[str, torch.Tensor], ok: dict[str, torch.Tensor], num_classes: int,
               task: str) -> BatchTransform:
    """Training: a row lacking a modality gets the prototype of its class (multi-label: the
    mean over its positive findings that have one)."""
    def run(batch: Tensors) -> Tensors:
        targets = to_fill(batch)
        labels = _labels_matrix(batch.y.cpu(), num_classes, task).float()
        for modality, rows in targets.items():
            member = labels * ok[modality].float().unsqueeze(0)
            has = member.sum(1) > 0
            rows = rows & has.to(rows.device)
            if bool(rows.any()):
                weights = member[rows.cpu()] / member[rows.cpu()].sum(1, keepdim=True)
                batch = put(batch, modality, rows, (weights @ protos[modality]).to(rows.device))
        return batch

    return run


class PrototypeNet(FillingNet):
    """Prediction: the missing modality as the posterior-weighted mix of its class prototypes,
    the posterior from the present modality's cosine similarity to its own prototypes."""

    def __init__(self, net: nn.Module, protos: dict[str, torch.Tensor], ok: dict[str, torch.Tensor],
                 temperature: float) -> None:
        super().__init__(net)
        device = next(net.parameters()).device
        for m in ("image", "text"):
            self.register_buffer(f"proto_{m}", protos[m].float().to(device))
        self.register_buffer("usable", (ok["image"] & ok["text"]).to(device))
        self.temperature = float(temperature)

    def fill(self, batch: Tensors) -> Tensors:
        if not bool(self.usable.any()):
            return batch
        targets = to_fill(batch)
        for missing, present in DIRECTIONS:
            rows = targets.get(missing)
            if rows is None or not bool(rows.any()):
                continue
            x_present, _ = features(batch, present)
            keys = unit(getattr(self, f"proto_{present}")[self.usable])
            post = torch.softmax(unit(x_present[rows]) @ keys.T / self.temperature, dim=1)
            batch = put(batch, missing, rows, post @ getattr(self, f"proto_{missing}")[self.usable])
        return batch


class Prototype(FedAvg):
    name = "prototype"
    description = "FedAvg; a missing modality filled with that modality's class prototype (PmcmFL, MFCPL)"
    config_defaults: ClassVar[dict[str, Any]] = {
        "prototype.impute": True, "prototype.temperature": 0.05, "prototype.min_count": 3,
    }
    input_kinds = ("features",)

    def __init__(self, cfg: dict[str, Any], spec, clients) -> None:
        super().__init__(cfg, spec, clients)
        if spec.input_kind != "features":
            raise ConfigError("prototype: class prototypes are means of frozen-tower features; use towers=frozen")
        self.temperature = float(cfg["prototype.temperature"])
        if not self.temperature > 0:
            raise ConfigError(f"prototype.temperature must be > 0, got {self.temperature}")
        self.min_count = int(cfg["prototype.min_count"])
        if self.min_count < 1:
            raise ConfigError(f"prototype.min_count must be at least 1, got {self.min_count}")
        if bool(cfg["prototype.impute"]) and self.dp_on:
            raise ConfigError("prototype: dp.noise > 0 would release the class means un-noised; "
                              "set prototype.impute=false or dp.noise=0")
        # imputation needs both modalities in the data set; otherwise this is plain FedAvg
        self.impute = bool(cfg["prototype.impute"]) and set(spec.modalities) == {"image", "text"}
        self.dims = {"image": spec.img_dim, "text": spec.txt_dim}

    # ---- server ---------------------------------------------------------------------------
    def init_server(self) -> None:
        super().init_server()
        c = self.spec.num_classes
        self.sums = {m: np.zeros((c, self.dims[m] or 0)) for m in ("image", "text")}
        self.counts = {m: np.zeros(c) for m in ("image", "text")}

    def phases(self, rnd: int) -> list[str]:
        return ["prototypes", "train"] if self.impute and rnd == 1 else ["train"]

    def participants(self, phase: str, rnd: int, sampled: list[int]) -> list[int]:
        return sorted(self.clients) if phase == "prototypes" else sampled

    def prototype_arrays(self) -> dict[str, np.ndarray]:
        """What the server broadcasts: the prototypes and which classes have one."""
        if not self.impute:
            return {}
        out = {}
        for m in ("image", "text"):
            n = self.counts[m]
            out[f"proto.{m}"] = (self.sums[m] / np.maximum(n, 1)[:, None]).astype(np.float32)
            out[f"proto.{m}.ok"] = n > 0
        return out

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        if phase == "prototypes":
            return {cid: Message() for cid in cids}
        extra = self.prototype_arrays()
        return {cid: Message({**self.params_for(cid), **extra}) for cid in cids}

    def eval_message(self, cid: int) -> Message:
        return Message({**self.params_for(cid), **self.prototype_arrays()})

    def model_arrays(self, msg: Message) -> dict[str, np.ndarray]:
        return {k: v for k, v in msg.arrays.items() if not k.startswith("proto.")}

    def mine(self, modalities: tuple[str, ...]) -> list[str]:
        return [m for m in ("image", "text") if m in modalities and self.dims[m]]

    def reply_schema(self, phase: str, rnd: int, cid: int, sent: Message) -> dict[str, ArraySpec] | None:
        if phase != "prototypes":
            return super().reply_schema(phase, rnd, cid, sent)
        c = self.spec.num_classes
        schema = {}
        for m in self.mine(self.clients[cid].modalities):
            schema[f"{m}.mean"] = ArraySpec((c, int(self.dims[m])), "float32")
            schema[f"{m}.count"] = ArraySpec((c,), "int64")
        return schema

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        if phase != "prototypes":
            return super().aggregate(phase, rnd, replies)
        for cid, reply in sorted(replies.items()):
            for m in self.mine(self.clients[cid].modalities):
                # a client cannot weigh more than the rows it declared
                n = np.clip(reply.arrays[f"{m}.count"].astype(np.float64), 0, self.clients[cid].num_train)
                self.sums[m] += reply.arrays[f"{m}.mean"].astype(np.float64) * n[:, None]
                self.counts[m] += n

    def server_state(self) -> dict[str, np.ndarray]:
        state = dict(self.global_params)
        for m in ("image", "text"):
            state[f"proto:{m}:sum"], state[f"proto:{m}:count"] = self.sums[m], self.counts[m]
        return state

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_params = {k: v for k, v in state.items() if not k.startswith("proto:")}
        for m in ("image", "text"):
            self.sums[m] = np.array(state[f"proto:{m}:sum"], np.float64)
            self.counts[m] = np.array(state[f"proto:{m}:count"], np.float64)

    def global_model(self) -> nn.Module | None:
        return self.client_model(None, Message({**self.global_params, **self.prototype_arrays()}))

    # ---- client ---------------------------------------------------------------------------
    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        if phase != "prototypes":
            return super().client_step(phase, rnd, ctx, msg)
        out = {}
        for m in self.mine(ctx.modalities):
            mean, count = class_statistics(ctx.train, m, ctx.spec.num_classes, ctx.spec.task, self.min_count)
            out[f"{m}.mean"], out[f"{m}.count"] = mean, count
        return Message(out)

    def client_steps(self, phase: str, rnd: int, ctxs: list[ClientContext], msgs: list[Message]) -> list[Message] | None:
        return None if phase == "prototypes" else super().client_steps(phase, rnd, ctxs, msgs)

    @staticmethod
    def received(msg: Message) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        if "proto.image" not in msg.arrays:
            return None
        protos = {m: torch.as_tensor(msg.arrays[f"proto.{m}"]) for m in ("image", "text")}
        ok = {m: torch.as_tensor(msg.arrays[f"proto.{m}.ok"]).bool() for m in ("image", "text")}
        return protos, ok

    def batch_transform(self, ctx: ClientContext, msg: Message) -> BatchTransform | None:
        got = self.received(msg)
        fill = None if got is None else label_fill(*got, ctx.spec.num_classes, ctx.spec.task)
        return compose(super().batch_transform(ctx, msg), fill)

    def client_model(self, ctx: ClientContext | None, msg: Message) -> nn.Module:
        net = load_arrays(self.model(), self.model_arrays(msg))
        got = self.received(msg)
        return net if got is None else PrototypeNet(net, *got, self.temperature)


METHOD = Prototype
