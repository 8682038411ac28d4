"""How well can a single-modality model do for the image-only and text-only clients?

Pools every client's training rows of one modality on one machine (no federation, no privacy:
a ceiling, not a method) and fits three classifiers on the frozen features of that modality
alone: a logistic regression (scikit-learn) and a one-hidden-layer MLP (256 units), both from
:mod:`adamodal.ceiling` (the scenario suite, ``benchmarks/missing_modality.py``, uses the same),
and AdaModal-Fed's own network (factorised projection, adapter, classifier; no server knowledge,
so no imputation). All are scored exactly as ``groups_server_test`` scores a method: each
image-only (text-only) client's view of the server's test set (its modality, its vendor),
predictions pooled over the group's clients. Multi-class data sets only.

An image-only client predicts from the same input, so these numbers say how much room there
is above FedAvg on the unimodal groups of this data set.

    .venv/bin/python benchmarks/unimodal_ceiling.py [--seeds 0,1,2] [--set key=value ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from adamodal.ceiling import FITTERS, features, pooled_train
from adamodal.config import resolve
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import predict as predict_rows
from adamodal.kit.train import train_epochs
from adamodal.methods.adamodal import build_adamodal_net
from adamodal.metrics import compute_metrics
from adamodal.runtime.simulator import prepare

GROUP_MODALITY = {"image_only": "image", "text_only": "text"}


def only(t: Tensors, modality: str) -> Tensors:
    """The rows of ``t`` that have ``modality``, with the other modality hidden."""
    keep = t.m_img if modality == "image" else t.m_txt
    sub = t.subset(torch.nonzero(keep).flatten())
    none = torch.zeros_like(sub.m_img)
    return Tensors(sub.x_img, sub.x_txt, sub.m_img if modality == "image" else none,
                   sub.m_txt if modality == "text" else none, sub.y)


def fit_network(train: Tensors, modality: str, exp, seed: int, epochs: int = 20):
    """AdaModal-Fed's network with its default options, trained on one modality's rows only."""
    net = build_adamodal_net(exp.spec, seed)
    train_epochs(net, only(train, modality), exp.cfg, task=exp.spec.task, epochs=epochs,
                 generator=torch.Generator().manual_seed(seed))
    return lambda view: predict_rows(net, only(view, modality), exp.spec.task)


def _on_views(predict, modality: str):
    """A feature-matrix predictor as a predictor of a test view's rows."""
    return lambda view: predict(features(view, (modality,))[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: dict[tuple[str, str], list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = resolve({}, {**dict(kv.split("=", 1) for kv in args.set), "seed": seed})
        exp = prepare(cfg, progress=False)
        train = pooled_train(exp)
        for group, modality in GROUP_MODALITY.items():
            members = [c for c in exp.clients if c.group == group]
            if not members:
                continue
            x, y = features(train, (modality,))
            labels = [features(exp.test_as_client[c.cid], (modality,))[1] for c in members]
            models = {name: _on_views(fit(x, y, exp.spec.num_classes, seed), modality)
                      for name, fit in FITTERS.items()}
            models["AdaModal-Fed network"] = fit_network(train, modality, exp, seed)
            for name, predict in models.items():
                scores = [predict(exp.test_as_client[c.cid]) for c in members]
                auc = compute_metrics(np.concatenate(scores), np.concatenate(labels), exp.spec.task)["macro_auc"]
                rows.setdefault((group, name), []).append(auc)
                print(f"seed {seed} {group:10s} {name:20s} macro-AUC {auc:.3f}", flush=True)
    print("\n| group | pooled central model | macro-AUC (mean ± std) |\n|---|---|---|")
    for (group, name), v in rows.items():
        spread = f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""
        print(f"| {group} | {name} | {np.mean(v):.3f}{spread} |")


if __name__ == "__main__":
    main()
