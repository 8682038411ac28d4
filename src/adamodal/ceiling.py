"""The pooled ceiling: how well could a model do for one modality group of clients?

Pools every client's training rows on one machine (no federation, no privacy: a reference
point, not a method) and fits two small classifiers on the frozen features of the group's
modalities: a logistic regression (scikit-learn) and a one-hidden-layer MLP (256 units), as
``benchmarks/unimodal_ceiling.py`` has recorded them in ``docs/results.md``. Both
are scored exactly as ``groups_server_test`` scores a method: each member client's view of the
server's test set (its modalities, its image domain, at most ``eval.max_rows`` rows), the
predictions pooled over the group's clients. The ceiling is the better of the two.

- image-only / text-only group: every pooled training row that has that modality, that
  modality's features alone. An image-only client predicts from exactly this input, so
  ceiling - FedAvg is the room a method has on that group (the question the seeds' claims
  are about).
- image+text group: every pooled training row, both modalities' features side by side, a
  missing one zero-filled with its 0/1 mask appended (with sample-level missingness most rows
  lack one), each feature standardized, scored on the ``both`` view. Not a bound: a fusion
  network trained federated can beat it (FedAvg does on the emoji default); it says how far
  a method is from a pooled model of the same inputs.

Multi-class data sets with frozen-tower features only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.errors import AdamodalError
from adamodal.kit.tensors import Tensors
from adamodal.metrics import compute_metrics

if TYPE_CHECKING:
    from adamodal.runtime.simulator import Experiment

#: what each group's ceiling model reads
GROUP_MODALITIES: dict[str, tuple[str, ...]] = {
    "multimodal": ("image", "text"), "image_only": ("image",), "text_only": ("text",),
}
#: bumped whenever the numbers this module computes change, so cached ceilings are redone
VERSION = 2
#: a fitted model: feature matrix -> class probabilities ``[n, C]``
Predictor = Callable[[np.ndarray], np.ndarray]


def features(t: Tensors, modalities: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of the rows of ``t`` that a model of ``modalities`` can read.

    One modality: its rows and features. Both: every row with either, the two feature blocks
    (zero where missing) and the two masks side by side."""
    if len(modalities) == 1:
        rows = (t.m_img if modalities[0] == "image" else t.m_txt).numpy()
        x = (t.x_img if modalities[0] == "image" else t.x_txt)
        if x is None:
            raise AdamodalError(f"the data set has no {modalities[0]} features")
        return x.numpy()[rows], t.y.numpy()[rows]
    if t.x_img is None or t.x_txt is None:
        raise AdamodalError("the image+text ceiling needs both modalities' features")
    rows = (t.m_img | t.m_txt).numpy()
    masks = torch.stack([t.m_img, t.m_txt], 1).float()
    x = torch.cat([t.x_img * t.m_img[:, None], t.x_txt * t.m_txt[:, None], masks], 1)
    return x.numpy()[rows], t.y.numpy()[rows]


def fit_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> Predictor:
    """Logistic regression (C=1); classes absent from training get probability 0."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x, y)

    def predict(xt: np.ndarray) -> np.ndarray:
        p = np.zeros((len(xt), num_classes))
        p[:, clf.classes_] = clf.predict_proba(xt)
        return p

    return predict


def fit_mlp(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, epochs: int = 20) -> Predictor:
    """One hidden layer of 256 GELU units, dropout 0.1, Adam 1e-3, batches of 32; seeded."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), 32):
            idx = order[s:s + 32]
            loss = F.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def predict(xv: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.as_tensor(xv, dtype=torch.float32)), -1).numpy()

    return predict


FITTERS: dict[str, Callable[..., Predictor]] = {"logistic regression": fit_logreg, "MLP": fit_mlp}


def pooled_train(exp: Experiment) -> Tensors:
    """Every client's training rows in one set."""
    return Tensors.concat([c.train for c in exp.clients])


def group_ceiling(exp: Experiment, group: str, seed: int, train: Tensors | None = None) -> dict[str, float]:
    """Macro-AUC of each pooled model on ``group``'s clients' views of the server test set,
    pooled over the group as ``groups_server_test`` pools them; ``{}`` when the group has
    no clients."""
    if exp.spec.task != "multiclass":
        raise AdamodalError(f"the pooled ceiling is for multi-class data; {exp.bundle.name} is {exp.spec.task}")
    if exp.inputs.kind != "features":
        raise AdamodalError("the pooled ceiling reads frozen-tower features: set towers=frozen")
    members = [c for c in exp.clients if c.group == group]
    if not members:
        return {}
    mods = GROUP_MODALITIES[group]
    x, y = features(train if train is not None else pooled_train(exp), mods)
    views = [features(exp.test_as_client[c.cid], mods) for c in members]
    x_test = np.concatenate([v[0] for v in views])
    y_test = np.concatenate([v[1] for v in views])
    if len(mods) > 1:
        # two feature blocks of very different scales side by side (EfficientNet ~0.6 and
        # MiniLM ~0.03 per dimension): standardized on the training rows, or the text block
        # barely counts (on few-multimodal: MLP 0.89 raw, 0.95 standardized; the logistic
        # regression also converges several times faster)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x, x_test = (x - mu) / sd, (x_test - mu) / sd
    out = {}
    for name, fit in FITTERS.items():
        predict = fit(x, y, exp.spec.num_classes, seed)
        out[name] = float(compute_metrics(predict(x_test), y_test, "multiclass")["macro_auc"])
    return out


def ceilings(exp: Experiment, seed: int, groups: tuple[str, ...] = tuple(GROUP_MODALITIES)) -> dict[str, dict]:
    """Per group present in the scenario: ``{"macro_auc": best, "model": its name, "models": all}``."""
    train = pooled_train(exp)
    out = {}
    for group in groups:
        scores = group_ceiling(exp, group, seed, train)
        if scores:
            best = max(scores, key=lambda k: scores[k])
            out[group] = {"macro_auc": scores[best], "model": best, "models": scores}
    return out
