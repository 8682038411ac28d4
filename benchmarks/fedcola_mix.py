"""FedCola vs FedAvg and FedProx on the same transformer, scaled down from seed 002's setting:
image-only clients (Fashion-MNIST), text-only clients (Reuters-8 by default, or 20 Newsgroups),
multimodal clients (emoji, one vendor), Dirichlet 0.5, participation 0.25.

    PYTHONPATH=src .venv/bin/python benchmarks/fedcola_mix.py [--rounds 10] [--seeds 0] [--out runs/bench-fedcola] [--ablation]

Reported per method, each from the server's model of that data set on the server's test set:
image accuracy (Fashion-MNIST, argmax over its 10 classes), text accuracy (argmax over the
corpus' classes), and emoji image<->text retrieval R@1 (image->text + text->image, in %, as in
the seed; R@10 too), every test pair against every other. Writes OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamodal.config import resolve
from adamodal.data.mix import label_ranges
from adamodal.kit.train import predict
from adamodal.runtime.simulator import Simulator, prepare

VARIANTS = {
    "fedavg": {"fedcola.variant": "fedavg"},
    "fedprox": {"fedcola.variant": "fedprox"},
    "fedcola": {"fedcola.variant": "fedcola"},
}
#: FedCola with one part switched off at a time (``--ablation``; the full method is the main table's row)
ABLATION = {
    "no complementary": {"fedcola.variant": "fedcola", "fedcola.complementary": "false"},
    "aux attention only": {"fedcola.variant": "fedcola", "fedcola.aux_layers": "attn"},
    "no compensation": {"fedcola.variant": "fedcola", "fedcola.compensation": "false"},
    "no collaboration": {"fedcola.variant": "fedcola", "fedcola.collaborative": "false"},
}
#: the scaled-down setting (seed: 12 image / 12 text / 8 multimodal clients, ViT-S, 30 rounds x 5 epochs)
SETTING: dict[str, Any] = {
    "dataset": "mix", "method": "fedcola", "towers": "small", "device": "cpu", "threads": 1,
    "clients.image_only": 4, "clients.text_only": 4, "clients.multimodal": 4,
    "partition": "dirichlet", "partition.alpha": 0.5, "participation": 0.25,
    "local_epochs": 2, "batch_size": 32, "lr": 0.001, "model.dropout": 0.0,
    "mix.text": "reuters8", "mix.size": 32, "mix.max_train": 1200, "mix.max_test": 400,
    "fedcola.width": 128, "fedcola.depth": 4, "fedcola.heads": 4, "fedcola.mlp_ratio": 2.0,
    "fedcola.max_tokens": 48, "fedcola.vocab": 8192, "eval.max_rows": 200,
}


def masked_accuracy(model: torch.nn.Module, data, task: str, lo: int, hi: int) -> float:
    """Accuracy with the argmax taken over one source's classes (its data set's head)."""
    scores = predict(model, data, task)[:, lo:hi]
    return float(np.mean(scores.argmax(axis=1) + lo == data.y.numpy()))


@torch.inference_mode()
def retrieval_recall(net, data, k: int = 1) -> tuple[float, float]:
    """Recall@k image->text and text->image over paired rows (row i's partner is row i)."""
    net.eval()
    zi, zt = net.pair_embeddings(data.x_img, data.x_txt)
    sim = (zi @ zt.t()).numpy()
    target = np.arange(len(sim))
    # rank of the true partner among all candidates (0 = first)
    i2t = (sim > sim[target, target][:, None]).sum(axis=1)
    t2i = (sim > sim[target, target][None, :]).sum(axis=0)
    return float(np.mean(i2t < k)), float(np.mean(t2i < k))


def run(rounds: int, seed: int, out: Path, extra: dict[str, Any], variants: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    base = resolve({}, {**SETTING, "rounds": rounds, "eval.every": rounds, "seed": seed, **extra})
    exp = prepare(base, progress=False)
    ranges = label_ranges(exp.bundle)
    text_src = str(base["mix.text"])
    rows = {}
    for name, over in variants.items():
        cfg = resolve({}, {**SETTING, "rounds": rounds, "eval.every": rounds, "seed": seed, **extra, **over})
        sim = Simulator(dataclasses.replace(exp, cfg=cfg), out / f"{name.replace(' ', '_')}-s{seed}", progress=False)
        t0 = time.perf_counter()
        summary = sim.run()
        wall = time.perf_counter() - t0
        m = sim.method
        task = exp.spec.task
        i2t, t2i = retrieval_recall(m.group_model("multimodal"), exp.test["both"], 1)
        i2t10, t2i10 = retrieval_recall(m.group_model("multimodal"), exp.test["both"], 10)
        rows[name] = {
            "image_acc": masked_accuracy(m.group_model("image_only"), exp.test["image"], task, *ranges["fmnist"]),
            "text_acc": masked_accuracy(m.group_model("text_only"), exp.test["text"], task, *ranges[text_src]),
            "emoji_acc": masked_accuracy(m.group_model("multimodal"), exp.test["both"], task, *ranges["emoji"]),
            "r1_i2t": 100 * i2t, "r1_t2i": 100 * t2i, "r1_sum": 100 * (i2t + t2i), "r10_sum": 100 * (i2t10 + t2i10),
            "mb_up_per_round": summary["bytes_up_per_round"] / 1e6,
            "mb_down_per_round": summary["bytes_down_per_round"] / 1e6, "wall_s": wall,
        }
        print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[name].items()), flush=True)
    n_test = {"FMNIST images": len(exp.test["image"]), f"{text_src} texts": len(exp.test["text"]),
              "emoji pairs": len(exp.test["both"])}
    return rows, n_test


def table(results: dict[int, dict[str, dict[str, float]]], n_test: dict[str, int]) -> str:
    names = list(next(iter(results.values())))
    cols = [("image_acc", "image acc (FMNIST)"), ("text_acc", "text acc"), ("emoji_acc", "emoji category acc"),
            ("r1_i2t", "R@1 i->t"), ("r1_t2i", "R@1 t->i"), ("r1_sum", "R@1 sum"), ("r10_sum", "R@10 sum"),
            ("mb_up_per_round", "MB up/round"), ("mb_down_per_round", "MB down/round"), ("wall_s", "wall s")]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        cells = []
        for key, _ in cols:
            vals = np.array([results[s][name][key] for s in results])
            fmt = "{:.1f}" if key in ("r1_i2t", "r1_t2i", "r1_sum", "r10_sum", "wall_s") else "{:.3f}" if "acc" in key else "{:.2f}"
            cell = fmt.format(vals.mean())
            if len(vals) > 1:
                cell += " ± " + fmt.format(vals.std())
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test rows: " + ", ".join(f"{k} {v}" for k, v in n_test.items()) + ".")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", type=Path, default=Path("runs/bench-fedcola"))
    p.add_argument("--set", dest="assignments", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. mix.text=newsgroups")
    p.add_argument("--ablation", action="store_true", help="FedCola with each part off instead of the baselines")
    args = p.parse_args()
    extra = dict(a.split("=", 1) for a in args.assignments)
    args.out.mkdir(parents=True, exist_ok=True)
    results, n_test = {}, {}
    for s in args.seeds.split(","):
        results[int(s)], n_test = run(args.rounds, int(s), args.out, extra, ABLATION if args.ablation else VARIANTS)
    md = table(results, n_test)
    (args.out / "results.md").write_text(md + "\n")
    (args.out / "results.json").write_text(json.dumps({"setting": {**SETTING, **extra, "rounds": args.rounds},
                                                       "results": results}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
