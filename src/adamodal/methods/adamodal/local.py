"""What a client trains on its own data: the task loss plus the stages' local terms.

``L = L_task + infonce_weight * InfoNCE(P_img, P_txt)`` (paired rows; stage 1's shared space)
``+ impute_weight * ||CA(r_src) - r_tgt||^2`` (paired rows; stage 3's imputer)
``+ beta * ||r - z_k||^2`` (stage 4's propagation) ``+ replay * CE(head(P_c), c)`` (the
server's class prototypes, each a one-modality row of its class: a client rehearses the classes
other clients hold; multiclass tasks), with modality dropout on paired rows: one
modality of a row is hidden with probability ``modality_dropout`` so that the shared fusion
and classifier learn to predict from one modality (imputed or, under ``impute=zero``, masked),
which is what the unimodal clients predict from. The random draws come from the client's
generator, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adamodal.kit.tensors import Tensors
from adamodal.kit.train import dropout_rows, make_optimizer, minibatch_epochs, task_loss
from adamodal.methods.adamodal.gating import propagation_loss
from adamodal.methods.adamodal.imputation import imputation_loss
from adamodal.methods.adamodal.net import AdaModalNet, Forward


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (row i of each is one sample):
    pulls a sample's two modalities together and pushes other samples apart. Zero for fewer
    than two pairs (no negatives)."""
    if len(a) < 2:
        return a.sum() * 0.0
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    # both directions in one call: the mean over the 2n rows is the mean of the two losses
    return F.cross_entropy(torch.cat([logits, logits.T]), torch.cat([target, target]))


@dataclass(frozen=True)
class LocalTerms:
    """The weights of the local loss terms (0 switches a term off)."""

    infonce_weight: float = 0.5
    infonce_temperature: float = 0.1
    impute_weight: float = 1.0
    beta: float = 0.1
    modality_dropout: float = 0.9
    replay: float = 0.1


def dropout_masks(m_img: torch.Tensor, m_txt: torch.Tensor, p: float,
                  generator: torch.Generator | None) -> dict[str, torch.Tensor] | None:
    """Modality dropout's hidden rows per modality (the training kit's draw), or None when
    off. The rows keep their real representation for the paired losses; only the fusion
    treats them as missing."""
    if p <= 0:
        return None
    image, text = dropout_rows(m_img, m_txt, p, generator)
    return {"image": image, "text": text}


def local_terms(fwd: Forward, terms: LocalTerms) -> torch.Tensor:
    """The stages' terms of one forward pass (zero when every term is off)."""
    loss = fwd.logits.sum() * 0.0
    paired = fwd.rows["image"] & fwd.rows["text"]
    if terms.infonce_weight > 0 and "image" in fwd.reps and "text" in fwd.reps and bool(paired.any()):
        every = bool(paired.all())  # a multimodal client's batch: no gather (nor its backward)
        a, b = (fwd.reps["image"], fwd.reps["text"]) if every else (fwd.reps["image"][paired], fwd.reps["text"][paired])
        loss = loss + terms.infonce_weight * info_nce(a, b, terms.infonce_temperature)
    for extra in (imputation_loss(fwd.reps, fwd.imputed, paired, terms.impute_weight),
                  propagation_loss(fwd.reps, fwd.protos, fwd.rows, terms.beta)):
        if extra is not None:
            loss = loss + extra
    return loss


def replay_loss(fwd: Forward) -> torch.Tensor | None:
    """The mean over modalities of the class prototypes' cross-entropy (each prototype went
    through the gate, the fusion and the classifier as a one-modality row of its class, in the
    batch's pass: :meth:`AdaModalNet.run` with ``replay``): every client rehearses the classes
    other clients hold. None without prototypes."""
    if not fwd.replay:
        return None
    return sum(F.cross_entropy(logits, labels) for logits, labels in fwd.replay) / len(fwd.replay)


BatchExtra = Callable[[AdaModalNet, Tensors, Forward], torch.Tensor]


def train_local(model: AdaModalNet, data: Tensors, cfg: dict, terms: LocalTerms, *, task: str, epochs: int,
                generator: torch.Generator, device: torch.device, extra: BatchExtra | None = None) -> float:
    """Mini-batch training of ``L_task + local terms (+ extra)``; returns the mean loss."""
    if len(data) == 0 or epochs == 0:
        return float("nan")
    model.train()
    data = data.to(device)
    opt = make_optimizer(model.parameters(), cfg)
    paired_possible = terms.infonce_weight > 0 or terms.impute_weight > 0
    replay = terms.replay > 0 and task == "multiclass"

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        b = data.subset(rows)
        hide = dropout_masks(b.m_img, b.m_txt, terms.modality_dropout, generator)
        fwd = model.run(b.x_img, b.x_txt, b.m_img, b.m_txt, hide=hide, impute_all=paired_possible, replay=replay)
        loss = task_loss(fwd.logits, b.y, task) + local_terms(fwd, terms)
        rehearsed = replay_loss(fwd)
        if rehearsed is not None:
            loss = loss + terms.replay * rehearsed
        return loss if extra is None else loss + extra(model, b, fwd)

    return minibatch_epochs(len(data), epochs, int(cfg["batch_size"]), opt, batch_loss, generator)
