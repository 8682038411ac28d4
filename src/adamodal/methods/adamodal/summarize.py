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

from adamodal.kit.clustering import (
    clip_and_noise,
    cosine_cost,
    hungarian_match,
    server_clusters,
    weighted_kmeans,
)

SUFFIX = {"image": "img", "text": "txt"}


@dataclass
class ClassPrototypes:
    """One modality's class prototypes (the classes some client holds there): ``reps`` in the
    shared space, their ``labels``, and ``z``, the Z of each one's nearest server centre (what
    the forget gate mixes it with; fixed for as long as the knowledge is)."""

    reps: torch.Tensor
    labels: torch.Tensor
    z: torch.Tensor


@dataclass
class Knowledge:
    """What the server broadcasts about the shared space, as tensors on the model's device.

    ``keys[m]`` are the server's centroids of modality m, row-aligned across modalities by the
    Hungarian pairing (row j of image and row j of text are a matched pair); ``protos[m]`` the
    cluster-level global representations Z (one row per centroid); ``means[m]`` the
    count-weighted mean of modality m (for ``impute=mean``); ``classes[m]`` the class prototypes
    of modality m and their class indices (for the replay term).
    """

    keys: dict[str, torch.Tensor]
    protos: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    paired: bool
    #: ``||key||^2`` per modality, computed once: every training batch looks up its rows' nearest key
    key_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per modality, the class prototypes the replay term feeds
    classes: dict[str, ClassPrototypes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_norms = {m: (c * c).sum(1) for m, c in self.keys.items()}

    def nearest(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Index of each row's nearest key of ``modality`` (:func:`nearest`, norms cached)."""
        return nearest(x, self.keys[modality], self.key_norms[modality])

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], device: torch.device | str) -> Knowledge | None:
        """From the arrays ``C_img``, ``C_txt``, ``pi``, ``Z_img``, ``Z_txt``, ``mean_img``,
        ``mean_txt`` (any subset); None if there is nothing to use."""
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        keys, protos, means = {}, {}, {}
        for m, s in SUFFIX.items():
            if f"C_{s}" in arrays and len(arrays[f"C_{s}"]):
                keys[m] = t(arrays[f"C_{s}"])
                if f"mean_{s}" in arrays:
                    means[m] = t(arrays[f"mean_{s}"])
        if not keys:
            return None
        paired = "pi" in arrays and len(keys) == 2
        if paired:
            pi = torch.as_tensor(np.asarray(arrays["pi"]), dtype=torch.long, device=device)
            keys["text"] = keys["text"][pi]  # row j of text now pairs with row j of image
        for m, s in SUFFIX.items():
            if m in keys:  # Z rows follow the pair order; without Z the centroids are the prototypes
                protos[m] = t(arrays[f"Z_{s}"]) if f"Z_{s}" in arrays else keys[m]
        know = Knowledge(keys, protos, means, paired)
        for m, s in SUFFIX.items():
            if f"P_{s}" in arrays and m in keys:
                held = np.flatnonzero(np.asarray(arrays[f"Pn_{s}"]) > 0)
                reps = t(np.asarray(arrays[f"P_{s}"])[held])
                know.classes[m] = ClassPrototypes(reps, torch.as_tensor(held, dtype=torch.long, device=device),
                                                  protos[m][know.nearest(m, reps)])
        return know


def nearest(x: torch.Tensor, centers: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Index of each row's nearest centre (squared Euclidean: ``||c||^2 - 2 x.c`` is the
    distance up to the row's own norm, one matrix product instead of a pairwise-distance
    kernel, which dominates on the small batches of local training). ``norms``: the centres'
    ``||c||^2``, when the caller keeps them."""
    norms = (centers * centers).sum(1) if norms is None else norms
    return torch.addmm(norms, x.detach(), centers.T, alpha=-2.0).argmin(dim=1)


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
    assign = weighted_kmeans(reps, k, seed=seed, n_init=1).labels  # one k-means++ start: tens of rows
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
                   sigma: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The summary arrays ``c_<m>``, ``n_<m>``, ``h_<m>`` of every modality the client has.

    ``share_rows`` (``share=embeddings``, opt-in) sends every row instead, with no labels.
    Centroids are clipped and noised when ``sigma > 0`` (the Gaussian mechanism).
    """
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
                      seeds: tuple[int, int], match_labels: float = 0.0, class_protos: bool = False,
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The server's knowledge (``C_img``, ``C_txt``, ``pi``, ``mean_*``; Z is added by the
    imputation stage) and its diagnostics (``class_agreement`` of the matched pairs).

    With both modalities the server keeps as many centres on each side, so every centre is
    paired. ``C_img`` is reordered so that row j pairs with ``C_txt[pi[j]]``. ``match_labels``
    > 0 adds ``match_labels * (1 - cosine)`` of the two centres' label histograms to the
    pairing cost: the spaces' geometry alone pairs classes by chance until they are aligned,
    while the histograms (aggregates the clients already send) say which centres share classes.
    ``class_protos`` adds, per modality, ``P_<m>`` (each class's mean over the centres, weighted
    by its rows at each) and ``Pn_<m>`` (its rows in all): the prototypes the replay term feeds.
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
            if class_protos:  # each class's mean over the centres, weighted by its rows there
                held = hists[m].sum(0)
                out[f"P_{s}"] = ((hists[m].T @ cc) / np.maximum(held, 1e-12)[:, None]).astype(np.float32)
                out[f"Pn_{s}"] = held.astype(np.float32)
    metrics: dict[str, float] = {}
    if len(stacked) == 2:
        extra = (match_labels * cosine_cost(hists["image"], hists["text"])
                 if match_labels > 0 and len(hists) == 2 else None)
        rows, cols = hungarian_match(out["C_img"], out["C_txt"], extra)
        out["C_img"], out["pi"] = out["C_img"][rows], cols
        if len(hists) == 2:
            agree = hists["image"][rows].argmax(1) == hists["text"][cols].argmax(1)
            metrics["class_agreement"] = float(agree.mean())
    return out, metrics
