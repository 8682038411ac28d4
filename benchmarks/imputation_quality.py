"""What does AdaModal-Fed's imputation carry? Reads a finished ``method=adamodal`` run and
scores its global model's shared head on the server test set three ways for the rows of each
single-modality condition: the present modality alone (imputed slot masked), the imputed
other modality alone, and both (what the method predicts with). Also the mean cosine between
the imputation and the real other modality on paired test rows, against a shuffled pairing.

    adamodal run --set method=adamodal --out runs/ada0
    .venv/bin/python benchmarks/imputation_quality.py runs/ada0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adamodal.config import load_toml, resolve
from adamodal.errors import AdamodalError
from adamodal.methods.adamodal import AdaModalFed
from adamodal.metrics import compute_metrics
from adamodal.runtime.simulator import CHECKPOINT, prepare


def load(run: Path):
    """The run's data and its global model with the last round's parameters and knowledge."""
    if not (run / CHECKPOINT).exists():
        raise AdamodalError(f"{run}: no {CHECKPOINT}; pass the folder of a finished adamodal run")
    cfg = resolve(load_toml(run / "config.toml"))
    if cfg["method"] != "adamodal":
        raise AdamodalError(f"{run}: method is {cfg['method']!r}, not adamodal")
    exp = prepare(cfg, progress=False)
    method = AdaModalFed(exp.cfg, exp.spec, exp.infos())
    method.init_server()
    state = torch.load(run / CHECKPOINT, weights_only=True)["server"]
    init = method.initial_params()
    arrays = {k: v.numpy() for k, v in state.items()}
    method.load_server_state(arrays)
    method.global_params = {k: v.reshape(init[k].shape) for k, v in method.global_params.items()}
    return exp, method.global_model().eval()


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    exp, net = load(args.run)
    task = exp.spec.task

    def score(parts: dict[str, torch.Tensor], y: np.ndarray) -> dict[str, float]:
        on = torch.ones(len(y), dtype=torch.bool)
        masks = {m: on if m in parts else ~on for m in ("image", "text")}
        logits = net.classifier(net.fuse(parts, masks["image"], masks["text"]))
        probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, -1)
        return compute_metrics(probs.numpy(), y, task)

    print("| input to the shared head | rows | macro-AUC | accuracy |\n|---|---|---|---|")
    for cond, src, tgt in (("image", "image", "text"), ("text", "text", "image")):
        if cond not in exp.test:
            continue
        d = exp.test[cond]
        y = d.y.numpy()
        r = net.encode(d.x_img, d.x_txt, d.m_img, d.m_txt)[src]
        z = net.prototype(src, r)
        present = net.gate(r, z)[0] if (net.use_gate and z is not None) else r
        imputed = net.impute(tgt, src, r)
        rows = [(f"{src} alone", {src: present})]
        if imputed is not None:
            rows += [(f"imputed {tgt} alone", {tgt: imputed}), ("both", {src: present, tgt: imputed})]
        for label, parts in rows:
            m = score(parts, y)
            print(f"| {label} | {cond}-only | {m['macro_auc']:.3f} | {m['accuracy']:.3f} |")
    if "both" in exp.test:
        d = exp.test["both"]
        reps = net.encode(d.x_img, d.x_txt, d.m_img, d.m_txt)
        shuffle = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))
        cos = lambda a, b: F.cosine_similarity(a, b).mean().item()  # noqa: E731
        print(f"\npaired test rows: cos(image rep, text rep) {cos(reps['image'], reps['text']):.3f}"
              f" vs shuffled {cos(reps['image'], reps['text'][shuffle]):.3f}")
        for tgt, src in (("text", "image"), ("image", "text")):
            imp = net.impute(tgt, src, reps[src])
            if imp is not None:
                print(f"cos(imputed {tgt}, real {tgt}) {cos(imp, reps[tgt]):.3f}"
                      f" vs shuffled {cos(imp, reps[tgt][shuffle]):.3f}")


if __name__ == "__main__":
    main()
