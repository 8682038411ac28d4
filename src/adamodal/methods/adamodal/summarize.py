"""Stage 2, representations and clustering: clients summarise, the server clusters and pairs.

Client side (:func:`client_summary`): the client encodes its training split with the CURRENT
global projections (the server sends them with the phase; a client summarising with the seed's
starting weights would put every centroid in a random space, not the one InfoNCE aligns) and
uploads, per modality, K-Means centroids with counts and each centroid's label histogram. A
centroid always stands for at least ``min_count`` rows, so a small client sends a coarser
summary, or none, never its rows.

Server side (:func:`cluster_summaries`): count-weighted K-Means per modality, then the
Hungarian pairing of image and text centres on ``1 - cosine``. The label histograms travel
with the centroids into the server's clusters, so the server can tell how often a matched
pair's classes agree (a diagnostic, in the round's metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from adamodal.clustering import clip_and_noise, hungarian_match, server_clusters, weighted_kmeans

SUFFIX = {"image": "img", "text": "txt"}


@dataclass
class Knowledge:
    """What the server broadcasts about the shared space, as tensors on the model's device.

    ``keys[m]`` are the server's centroids of modality m, row-aligned across modalities by the
    Hungarian pairing (row j of image and row j of text are a matched pair); ``protos[m]`` the
    cluster-level global representations Z (one row per centroid); ``means[m]`` the
    count-weighted mean of modality m (for ``impute=mean``).
    """

    keys: dict[str, torch.Tensor]
    protos: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    paired: bool
    #: ``impute=bank``: paired stand-ins in the input space (features per modality) and labels
    bank: dict[str, torch.Tensor] = field(default_factory=dict)
    bank_y: torch.Tensor | None = None

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], device: torch.device | str) -> Knowledge | None:
        """From the arrays ``C_img``, ``C_txt``, ``pi``, ``Z_img``, ``Z_txt``, ``mean_img``,
        ``mean_txt`` (any subset); None if there is nothing to use."""
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        bank = {m: t(arrays[f"B_{s}"]) for m, s in SUFFIX.items() if f"B_{s}" in arrays and len(arrays[f"B_{s}"])}
        bank_y = torch.as_tensor(np.asarray(arrays["B_y"]), device=device) if len(bank) == 2 else None
        bank = bank if len(bank) == 2 else {}
        keys, protos, means = {}, {}, {}
        for m, s in SUFFIX.items():
            if f"C_{s}" in arrays and len(arrays[f"C_{s}"]):
                keys[m] = t(arrays[f"C_{s}"])
                if f"mean_{s}" in arrays:
                    means[m] = t(arrays[f"mean_{s}"])
        if not keys:
            return Knowledge({}, {}, {}, False, bank, bank_y) if bank else None
        paired = "pi" in arrays and len(keys) == 2
        if paired:
            pi = torch.as_tensor(np.asarray(arrays["pi"]), dtype=torch.long, device=device)
            keys["text"] = keys["text"][pi]  # row j of text now pairs with row j of image
        for m, s in SUFFIX.items():
            if m in keys:  # Z rows follow the pair order; without Z the centroids are the prototypes
                protos[m] = t(arrays[f"Z_{s}"]) if f"Z_{s}" in arrays else keys[m]
        return Knowledge(keys, protos, means, paired, bank, bank_y)


def nearest(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest centre (squared Euclidean)."""
    return torch.cdist(x.detach(), centers).argmin(dim=1)


# ---- client side ----------------------------------------------------------------------------

def label_histogram(y: np.ndarray, assign: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Per cluster, how many of its rows carry each class ([k, classes]; multi-label: positive
    counts per finding, unknown findings not counted)."""
    hist = np.zeros((k, num_classes), np.float64)
    if y.ndim == 1:
        np.add.at(hist, (assign, y.astype(np.int64)), 1.0)
    else:
        np.add.at(hist, assign, np.nan_to_num(y.astype(np.float64), nan=0.0))
    return hist


def summarize_rows(reps: np.ndarray, y: np.ndarray, num_classes: int, k_local: int, min_count: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids [k, d], counts [k], label histograms [k, classes]) of one modality's rows.

    At most ``len(reps) // min_count`` centroids, and a cluster left with fewer than
    ``min_count`` rows is merged into its nearest neighbour, so every centroid averages at least
    ``min_count`` rows; fewer rows than that in all give an empty summary.
    """
    d = reps.shape[1]
    k = min(k_local, len(reps) // max(min_count, 1))
    if k < 1:
        return np.zeros((0, d), np.float32), np.zeros(0, np.float32), np.zeros((0, num_classes), np.float32)
    assign = weighted_kmeans(reps, k, seed=seed).labels
    while True:
        ids, counts = np.unique(assign, return_counts=True)
        small = ids[counts < min_count]
        if len(small) == 0 or len(ids) == 1:
            break
        worst = small[np.argmin(counts[counts < min_count])]
        centres = {i: reps[assign == i].mean(0) for i in ids if i != worst}
        target = min(centres, key=lambda i: float(((centres[i] - reps[assign == worst].mean(0)) ** 2).sum()))
        assign[assign == worst] = target
    ids = np.unique(assign)
    dense = np.searchsorted(ids, assign)
    centroids = np.stack([reps[dense == j].mean(0) for j in range(len(ids))])
    counts = np.bincount(dense, minlength=len(ids)).astype(np.float32)
    hist = label_histogram(y, dense, len(ids), num_classes)
    return centroids.astype(np.float32), counts, hist.astype(np.float32)


def client_summary(reps: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], y: np.ndarray,
                   num_classes: int, *, k_local: int, min_count: int, share_rows: bool, clip: float,
                   sigma: float, rng: np.random.Generator, class_stats: bool = False) -> dict[str, np.ndarray]:
    """The summary arrays ``c_<m>``, ``n_<m>``, ``h_<m>`` of every modality the client has,
    and with ``class_stats`` (multi-class only) the per-class ``cs_<m>`` / ``cq_<m>`` /
    ``cn_<m>`` sums, sums of squares and counts that the server's calibration pools.

    ``share_rows`` (``share=embeddings``, opt-in) sends every row instead, with no labels.
    Centroids are clipped and noised when ``sigma > 0`` (the Gaussian mechanism).
    """
    from adamodal.methods.adamodal.calibration import class_stats as stats_of

    out: dict[str, np.ndarray] = {}
    for m, r in reps.items():
        keep = rows[m].cpu().numpy()
        x = r.float().cpu().numpy()[keep]
        if len(x) == 0:
            continue
        if share_rows:
            c, n, h = x.astype(np.float32), np.ones(len(x), np.float32), None
        else:
            c, n, h = summarize_rows(x, y[keep], num_classes, k_local, min_count, int(rng.integers(2**31 - 1)))
            if len(c) == 0:
                continue
        s = SUFFIX[m]
        if class_stats:
            st = stats_of(x, y[keep].astype(np.int64), num_classes, min_count)
            out[f"cs_{s}"], out[f"cq_{s}"], out[f"cn_{s}"] = st["sum"], st["sq"], st["count"]
        out[f"c_{s}"] = clip_and_noise(c, clip, sigma, rng).astype(np.float32)
        out[f"n_{s}"] = n
        if h is not None:
            out[f"h_{s}"] = h
    return out


# ---- server side ----------------------------------------------------------------------------

def _stack(replies: list[dict[str, np.ndarray]], s: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    have = [r for r in replies if len(r.get(f"c_{s}", ()))]
    c = np.concatenate([r[f"c_{s}"] for r in have]).astype(np.float64)
    n = np.concatenate([r[f"n_{s}"] for r in have]).astype(np.float64)
    hist = np.concatenate([r[f"h_{s}"] for r in have]) if all(f"h_{s}" in r for r in have) else None
    return c, n, hist


def cluster_summaries(replies: list[dict[str, np.ndarray]], k: int, *, cluster: bool,
                      seeds: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The server's knowledge (``C_img``, ``C_txt``, ``pi``, ``mean_*``; Z is added by the
    imputation stage) and its diagnostics (``class_agreement`` of the matched pairs).

    With both modalities the server keeps as many centres on each side, so every centre is
    paired. ``C_img`` is reordered so that row j pairs with ``C_txt[pi[j]]``.
    """
    stacked = {m: _stack(replies, s) for m, s in SUFFIX.items() if any(len(r.get(f"c_{s}", ())) for r in replies)}
    if not stacked:
        return {}, {}
    if len(stacked) == 2:
        k = min(k, len(stacked["image"][0]), len(stacked["text"][0]))
    out: dict[str, np.ndarray] = {}
    hists: dict[str, np.ndarray] = {}
    for i, (m, (c, n, hist)) in enumerate(stacked.items()):
        cc, counts = server_clusters(c, n, k, seed=seeds[i], cluster=cluster)
        s = SUFFIX[m]
        out[f"C_{s}"] = cc
        out[f"mean_{s}"] = (counts[:, None] * cc).sum(0) / counts.sum()
        if hist is not None:  # each uploaded centroid's labels go to its nearest server centre
            owner = ((c[:, None, :] - cc[None, :, :].astype(np.float64)) ** 2).sum(-1).argmin(1)
            hists[m] = np.zeros((len(cc), hist.shape[1]))
            np.add.at(hists[m], owner, hist)
    metrics: dict[str, float] = {}
    if len(stacked) == 2:
        rows, cols = hungarian_match(out["C_img"], out["C_txt"])
        out["C_img"], out["pi"] = out["C_img"][rows], cols
        if len(hists) == 2:
            agree = hists["image"][rows].argmax(1) == hists["text"][cols].argmax(1)
            metrics["class_agreement"] = float(agree.mean())
    return out, metrics


def class_centroids(gaussians: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The knowledge from pooled per-class statistics (``summary=classes``): one centre per class
    that both modalities have, image row j paired with text row j (so ``pi`` is the identity and
    every pair's classes agree by construction), and each modality's count-weighted mean."""
    if len(gaussians) < 2:
        return {}
    (mi, _, ni), (mt, _, nt) = gaussians["image"], gaussians["text"]
    both = np.flatnonzero((ni > 0) & (nt > 0))
    if len(both) == 0:
        return {}
    out = {"C_img": mi[both].astype(np.float32), "C_txt": mt[both].astype(np.float32),
           "pi": np.arange(len(both), dtype=np.int64)}
    for s, (mean, n) in (("img", (mi, ni)), ("txt", (mt, nt))):
        out[f"mean_{s}"] = ((n[:, None] * mean).sum(0) / n.sum()).astype(np.float32)
    return out


# ---- the paired bank (impute=bank): stand-ins in the input space ---------------------------

def paired_summary(x_img: np.ndarray, x_txt: np.ndarray, y: np.ndarray, task: str, num_classes: int, *,
                   k_local: int, min_count: int, seed: int) -> dict[str, np.ndarray]:
    """A multimodal client's paired rows summarised as paired centroids in the input space:
    K-Means over each row's image and text features side by side (per class for multi-class
    tasks, so each centroid has one label), each centroid split back into an image part and a
    text part that come from the same rows. Every centroid averages at least ``min_count``
    rows. Arrays ``b_img``, ``b_txt``, ``b_y`` (class, or 0/1 findings), ``b_n``."""
    joint = np.concatenate([x_img, x_txt], axis=1).astype(np.float64)
    parts, labels, counts = [], [], []
    groups = [(c, y == c) for c in range(num_classes)] if task == "multiclass" else [(None, np.ones(len(y), bool))]
    for c, keep in groups:
        if keep.sum() < min_count:
            continue
        yk = y[keep] if c is None else np.zeros(int(keep.sum()), np.int64)
        cent, n, hist = summarize_rows(joint[keep], yk, num_classes if c is None else 1, k_local, min_count,
                                       seed + (0 if c is None else c))
        parts.append(cent)
        counts.append(n)
        labels.append(np.full(len(cent), c, np.int64) if c is not None else (hist / n[:, None] > 0.5).astype(np.float32))
    if not parts:
        return {}
    cent = np.concatenate(parts)
    d = x_img.shape[1]
    return {"b_img": cent[:, :d].astype(np.float32), "b_txt": cent[:, d:].astype(np.float32),
            "b_y": np.concatenate(labels), "b_n": np.concatenate(counts).astype(np.float32)}


def feature_class_sums(x: np.ndarray, y: np.ndarray, num_classes: int, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the sum of one modality's input features and the row count (classes under
    ``min_count`` rows report zeros), for the class-matched pairs of the bank."""
    sums = np.zeros((num_classes, x.shape[1]), np.float64)
    np.add.at(sums, y, x.astype(np.float64))
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    small = counts < min_count
    sums[small], counts[small] = 0.0, 0.0
    return sums.astype(np.float32), counts.astype(np.float32)


def pooled_bank(replies: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The server's bank: every client's paired centroids, plus, for each class that some
    clients hold as images and some as texts, the pair (class mean image, class mean text):
    the Hungarian pairing of stage 2 done by label, which reaches the classes that no
    multimodal client holds. Arrays ``B_img``, ``B_txt``, ``B_y``."""
    img = [r["b_img"] for r in replies if "b_img" in r]
    txt = [r["b_txt"] for r in replies if "b_txt" in r]
    ys = [r["b_y"] for r in replies if "b_y" in r]
    sums, counts = {}, {}
    for s in ("img", "txt"):
        have = [r for r in replies if f"fs_{s}" in r]
        if have:
            sums[s] = sum(r[f"fs_{s}"].astype(np.float64) for r in have)
            counts[s] = sum(r[f"fn_{s}"].astype(np.float64) for r in have)
    if len(sums) == 2:
        both = np.flatnonzero((counts["img"] > 0) & (counts["txt"] > 0))
        if len(both):
            img.append((sums["img"][both] / counts["img"][both, None]).astype(np.float32))
            txt.append((sums["txt"][both] / counts["txt"][both, None]).astype(np.float32))
            ys.append(both.astype(np.int64))
    if not img:
        return {}
    return {"B_img": np.concatenate(img), "B_txt": np.concatenate(txt), "B_y": np.concatenate(ys)}
