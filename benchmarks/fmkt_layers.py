"""FM-kt's layer table: accuracy per distilled feature layer, 8 or 4 classes per peer.

    .venv/bin/python benchmarks/fmkt_layers.py [--seeds 0,1] [--rounds 15] [--clients 10] \
        [--items 4000] [--rows local,none,1,all] [--reuse] [--out runs/bench-fmkt-layers]

Fashion-MNIST, the benchmark LeNet (towers=small, model=cnn) trained from scratch, peers on a
ring with 2 neighbours, each holding 8 or 4 of the 10 classes (partition=classes). Each row
distils the feature maps of one layer (1 = conv1, 2 = conv2, 3 = fc120, 4 = fc84), all of them,
none (logit KD only), or nothing at all (``local``: no exchange; ``local2``: no exchange but as
many cross-entropy epochs per round as a peer, whose distillation loss includes CE). The score is the seed's
"global accuracy": every peer's own model on the official test set (``--items`` rows of it),
averaged over peers, after the last round. Writes OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adamodal.config import resolve
from adamodal.runtime.simulator import run_experiment

SETTINGS = (8, 4)
#: row id -> (label, config overrides); ``local2`` gets as many cross-entropy passes per round
#: as an FM-kt peer (one local + one distillation epoch), so the exchange is not confounded with it
ROWS: dict[str, tuple[str, dict[str, object]]] = {
    "local": ("local (no exchange)", {"method": "local"}),
    "local2": ("local, 2 epochs per round", {"method": "local", "local_epochs": 2}),
    "none": ("none (logits only)", {"fmkt.layers": "none"}),
    "1": ("1", {"fmkt.layers": "1"}),
    "2": ("2", {"fmkt.layers": "2"}),
    "3": ("3", {"fmkt.layers": "3"}),
    "4": ("4", {"fmkt.layers": "4"}),
    "all": ("all", {"fmkt.layers": "all"}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--items", type=int, default=4000, help="data.max_items (train pool and test rows)")
    p.add_argument("--rows", default=",".join(ROWS), help="row ids: " + ", ".join(ROWS))
    p.add_argument("--out", type=Path, default=Path("runs/bench-fmkt-layers"))
    p.add_argument("--reuse", action="store_true", help="read runs already finished in OUT instead of redoing them")
    args = p.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; valid: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {
        "dataset": "fmnist", "towers": "small", "model": "cnn", "method": "fmkt",
        "clients.multimodal": 0, "clients.image_only": args.clients, "clients.text_only": 0,
        "partition": "classes", "data.max_items": args.items, "rounds": args.rounds, "local_epochs": 1,
        "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32, "eval.every": 1000,
    }
    results: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        label, overrides = ROWS[row]
        for classes in SETTINGS:
            for seed in seeds:
                cfg = resolve({}, {**base, **overrides, "partition.classes": classes, "seed": seed})
                run_dir = args.out / f"classes{classes}" / row / f"seed{seed}"
                done = run_dir / "summary.json"
                if args.reuse and done.exists():
                    s = json.loads(done.read_text())
                else:
                    s = run_experiment(cfg, run_dir, progress=False, force=True)
                rec = {"accuracy": s["test"]["image"]["accuracy"], "own_accuracy": s["groups"]["image_only"]["accuracy"],
                       "bytes_up_per_round": s["bytes_up_per_round"], "bytes_down_per_round": s["bytes_down_per_round"],
                       "wall_s": s["wall_s"]}
                results.setdefault(label, {}).setdefault(classes, []).append(rec)
                print(f"layers {label:26s} classes {classes} seed {seed}: global accuracy {rec['accuracy']:.4f} "
                      f"({rec['wall_s']:.0f} s)", flush=True)

    def cell(label: str, classes: int, key: str) -> str:
        vals = [100 * r[key] for r in results[label][classes]]
        return f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    table = ("| distilled layer | classes = 8 | classes = 4 | own-test (8) | own-test (4) | s per run |\n"
             "|---|---|---|---|---|---|\n")
    for label in (ROWS[r][0] for r in rows):
        wall = np.mean([r["wall_s"] for c in SETTINGS for r in results[label][c]])
        table += (f"| {label} | {cell(label, 8, 'accuracy')} | {cell(label, 4, 'accuracy')} | "
                  f"{cell(label, 8, 'own_accuracy')} | {cell(label, 4, 'own_accuracy')} | {wall:.0f} |\n")
    exchanged = [ROWS[r][0] for r in rows if ROWS[r][1].get("method") != "local"]
    one = results[exchanged[0]][8][0] if exchanged else None
    md = (f"# FM-kt: accuracy (%) per distilled layer\n\n"
          f"Fashion-MNIST, {args.clients} peers on a ring (2 neighbours), {args.items} training items in all, "
          f"{args.items} test rows, LeNet from scratch, SGD lr 0.01, {args.rounds} rounds of 1 local epoch + 1 "
          f"distillation epoch, seeds {', '.join(map(str, seeds))}. Global accuracy = each peer's model on the "
          "test set, averaged over peers; own-test = peers on their own held-out rows (their classes only).\n\n"
          + table)
    if one is not None:
        md += (f"\nPer peer per round: upload {one['bytes_up_per_round'] / args.clients / 1e3:.0f} kB (its model, "
               f"once), download {one['bytes_down_per_round'] / args.clients / 1e3:.0f} kB (two neighbours' models).\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(md)


if __name__ == "__main__":
    main()
