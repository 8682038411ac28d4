"""Stage 5, the server's calibration of the shared head from class statistics.

Under strong label skew every client's local epochs pull the shared head (adapter, fusion,
classifier) toward its own few classes, and averaging such heads leaves a head that is worst
exactly where a modality group is thin: an image-only client predicts through a head that
hardly any image row of its rarer classes ever trained. The summaries already live in the
current global space, so each client also reports, per modality and class, the sum, the sum
of squares and the count of its representations (classes with fewer than ``min_count`` rows
are left out). The server pools them into a diagonal Gaussian per class and modality, draws a
class-balanced set of virtual representations (image only, text only, and class-matched
pairs) and retrains the head on them through the same gate, imputation and fusion a real row
goes through. The projections, the imputer and the gate are not touched. This follows
classifier calibration with virtual representations (CCVR, Luo et al., NeurIPS 2021), made
modality-aware. Multi-class tasks only.
"""

from __future__ import annotations

import numpy as np
import torch

from adamodal.engine.train import make_optimizer, minibatch_epochs, task_loss
from adamodal.methods.adamodal.net import AdaModalNet

SUFFIX = {"image": "img", "text": "txt"}
#: the parameters the calibration trains (module prefixes)
HEAD = ("adapter.", "fusion.", "classifier.")


def class_stats(reps: np.ndarray, y: np.ndarray, num_classes: int, min_count: int) -> dict[str, np.ndarray]:
    """Per class: sum, sum of squares and count of the rows' representations; classes with
    fewer than ``min_count`` rows report zeros (no statistic of one or two rows leaves)."""
    d = reps.shape[1]
    sums, squares = np.zeros((num_classes, d), np.float64), np.zeros((num_classes, d), np.float64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    np.add.at(sums, y, reps)
    np.add.at(squares, y, reps.astype(np.float64) ** 2)
    small = counts < min_count
    sums[small], squares[small], counts[small] = 0.0, 0.0, 0.0
    return {"sum": sums.astype(np.float32), "sq": squares.astype(np.float32), "count": counts.astype(np.float32)}


def pooled_gaussians(replies: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per modality: (means [C, d], variances [C, d], counts [C]) pooled over the clients."""
    out = {}
    for m, s in SUFFIX.items():
        have = [r for r in replies if f"cn_{s}" in r]
        if not have:
            continue
        n = sum(r[f"cn_{s}"].astype(np.float64) for r in have)
        total = sum(r[f"cs_{s}"].astype(np.float64) for r in have)
        sq = sum(r[f"cq_{s}"].astype(np.float64) for r in have)
        safe = np.maximum(n, 1.0)[:, None]
        mean = total / safe
        var = np.maximum(sq / safe - mean**2, 1e-6)
        out[m] = (mean, var, n)
    return out


def virtual_rows(gaussians: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], per_class: int,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Class-balanced virtual representations: ``per_class`` image-only rows of every class
    with image statistics, as many text-only rows, and as many pairs for classes with both.
    Returns (reps per modality [N, d], has image [N], has text [N], labels [N])."""
    dim = next(iter(gaussians.values()))[0].shape[1]
    parts: list[tuple[str, int]] = []
    for m, (_, _, n) in gaussians.items():
        parts += [(m, c) for c in np.flatnonzero(n > 0)]
    if len(gaussians) == 2:
        both = (gaussians["image"][2] > 0) & (gaussians["text"][2] > 0)
        parts += [("both", c) for c in np.flatnonzero(both)]
    rows = len(parts) * per_class
    reps = {m: np.zeros((rows, dim), np.float32) for m in gaussians}
    has = {m: np.zeros(rows, bool) for m in SUFFIX}
    labels = np.zeros(rows, np.int64)
    for i, (kind, c) in enumerate(parts):
        sl = slice(i * per_class, (i + 1) * per_class)
        labels[sl] = c
        for m in (gaussians if kind == "both" else (kind,)):
            mean, var, _ = gaussians[m]
            reps[m][sl] = mean[c] + np.sqrt(var[c]) * rng.standard_normal((per_class, dim))
            has[m][sl] = True
    return reps, has["image"], has["text"], labels


def calibrate_head(model: AdaModalNet, gaussians: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                   cfg: dict, *, per_class: int, epochs: int, seed: int) -> float:
    """Retrain the head of ``model`` (in place) on virtual rows; returns the mean loss."""
    if not gaussians or epochs <= 0 or per_class <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    reps_np, has_img, has_txt, labels = virtual_rows(gaussians, per_class, rng)
    if len(labels) == 0:
        return float("nan")
    device = next(model.parameters()).device
    reps = {m: torch.as_tensor(r, device=device) for m, r in reps_np.items()}
    m_img, m_txt = torch.as_tensor(has_img, device=device), torch.as_tensor(has_txt, device=device)
    y = torch.as_tensor(labels, device=device)
    params = [p for k, p in model.named_parameters() if k.startswith(HEAD) and p.requires_grad]
    opt = make_optimizer(params, cfg)
    model.train()
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    try:
        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            fwd = model.from_reps({m: r[rows] for m, r in reps.items()}, m_img[rows], m_txt[rows])
            return task_loss(fwd.logits, y[rows], "multiclass")

        generator = torch.Generator().manual_seed(seed)
        return minibatch_epochs(len(y), epochs, 4 * int(cfg["batch_size"]), opt, batch_loss, generator)
    finally:
        for p in frozen:
            p.requires_grad_(True)
