"""Stage 1, warm-up and knowledge distillation.

Every client first trains locally (multimodal clients with InfoNCE, so both modalities share
one d-space) and reports a validation score. Clients at or above the ``kd_threshold``
quantile of the scores are teachers; the server relays up to ``kd_teachers`` of them to each
student (those that see every modality the student has first, then by score), and the student
distils on its OWN data: ``L_task + kd_weight * T^2 * KL(teacher || student)``. Raw data never
moves; a teacher's parameters pass through the server once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def comparable_scores(scalars: dict[int, dict[str, Any]]) -> dict[int, float]:
    """One score per client on one scale: validation macro-AUC when every client has it,
    otherwise minus the validation loss for all (mixing the two scales would rank clients by
    which metric happened to be defined). A client with neither gets the median."""
    if not scalars:
        return {}
    auc = {c: float(s.get("val_auc", float("nan"))) for c, s in scalars.items()}
    if all(np.isfinite(v) for v in auc.values()):
        return auc
    neg_loss = {c: -float(s.get("val_loss", float("nan"))) for c, s in scalars.items()}
    finite = [v for v in neg_loss.values() if np.isfinite(v)]
    fill = float(np.median(finite)) if finite else 0.0
    return {c: (v if np.isfinite(v) else fill) for c, v in neg_loss.items()}


def select_teachers(scores: dict[int, float], quantile: float) -> list[int]:
    """The clients whose score is at or above the ``quantile`` of all scores."""
    if not scores:
        return []
    cut = float(np.quantile(list(scores.values()), quantile))
    return sorted(c for c, s in scores.items() if s >= cut)


def teachers_for(student: tuple[str, ...], teachers: list[int], modalities: dict[int, tuple[str, ...]],
                 scores: dict[int, float], cap: int) -> list[int]:
    """The teachers relayed to a student with these modalities: only those sharing at least one
    modality with it; those seeing all of the student's modalities first, then the best scores,
    then the lower client id; at most ``cap``."""
    mods = set(student)
    eligible = [t for t in teachers if mods & set(modalities[t])]
    eligible.sort(key=lambda t: (not mods <= set(modalities[t]), -scores.get(t, 0.0), t))
    return eligible[:cap]


def soft_targets(teacher_logits: list[torch.Tensor], temperature: float, task: str) -> torch.Tensor:
    """The average of the teachers' softened predictions (probabilities, not logits, so a
    confident teacher cannot outvote the others by scale alone)."""
    if task == "multilabel":
        probs = [torch.sigmoid(t / temperature) for t in teacher_logits]
    else:
        probs = [torch.softmax(t / temperature, dim=-1) for t in teacher_logits]
    return torch.stack(probs).mean(0)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` at temperature T: softmax KL for multi-class, the mean
    per-label binary KL for multi-label. ``T^2`` keeps gradients comparable across T."""
    t = temperature
    eps = 1e-7
    if task == "multilabel":
        p = teacher_probs.clamp(eps, 1 - eps)
        log_q = F.logsigmoid(student_logits / t)
        log_1q = F.logsigmoid(-student_logits / t)
        kl = p * (p.log() - log_q) + (1 - p) * ((1 - p).log() - log_1q)
        return kl.mean() * t * t
    log_q = F.log_softmax(student_logits / t, dim=-1)
    p = teacher_probs.clamp_min(eps)
    return (p * (p.log() - log_q)).sum(-1).mean() * t * t
