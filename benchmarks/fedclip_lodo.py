"""FedCLIP vs FedAvg of the full head, leave-one-domain-out over the four emoji vendors.

    .venv/bin/python benchmarks/fedclip_lodo.py [--seeds 0,1,2] [--rounds 20] [--out runs/bench-fedclip-lodo]

Like the seed's PACS table: for each vendor held out, one image-only client per remaining
vendor (3 clients, IID labels) trains on frozen EfficientNet-Lite0 features; the server's test
emoji drawn by the held-out vendor are scored with the final global model. Writes
OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adamodal.config import resolve
from adamodal.data.emoji import VENDORS
from adamodal.runtime.simulator import run_experiment

VARIANTS = {
    "FedAvg": {"method": "fedavg"},
    "FedCLIP": {"method": "fedclip"},
    "FedCLIP, bridge rank 64": {"method": "fedclip", "fedclip.bridge_rank": 64},
}
BASE = {
    "dataset": "emoji", "towers": "frozen", "clients.multimodal": 0, "clients.image_only": 3,
    "clients.text_only": 0, "partition": "iid", "local_epochs": 1, "eval.every": 1000,
}


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/bench-fedclip-lodo"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, list[dict]]] = {}
    for vendor in VENDORS:
        for label, overrides in VARIANTS.items():
            method = label
            for seed in seeds:
                cfg = resolve({}, {**BASE, **overrides, "rounds": args.rounds, "seed": seed, "domains.holdout": vendor})
                folder = label.lower().replace(", ", "-").replace(" ", "_")
                s = run_experiment(cfg, args.out / vendor / folder / f"seed{seed}", progress=False, force=True)
                results.setdefault(vendor, {}).setdefault(method, []).append({
                    "accuracy": s["test"]["image"]["accuracy"], "macro_auc": s["test"]["image"]["macro_auc"],
                    "in_domain_accuracy": s["groups"]["image_only"]["accuracy"],
                    "bytes_up_per_round": s["bytes_up_per_round"], "clients": sum(s["clients"].values()),
                    "wall_s": s["wall_s"],
                })
                print(f"{vendor:9s} {method:24s} seed {seed}: held-out accuracy {results[vendor][method][-1]['accuracy']:.3f}",
                      flush=True)
    head = ("| held-out vendor | " + " | ".join(f"{v} accuracy" for v in VARIANTS) + " | "
            + " | ".join(f"{v} macro-AUC" for v in VARIANTS) + " |\n|---" + "|---" * 2 * len(VARIANTS) + "|\n")
    rows = []
    for vendor in [*VENDORS, "mean"]:
        def col(method: str, key: str, vendor: str = vendor) -> str:
            if vendor == "mean":  # per seed, the mean over vendors; then mean ± std over seeds
                vals = [np.mean([results[v][method][i][key] for v in VENDORS]) for i in range(len(seeds))]
            else:
                vals = [r[key] for r in results[vendor][method]]
            return mean_std([float(v) for v in vals])
        cells = [col(v, "accuracy") for v in VARIANTS] + [col(v, "macro_auc") for v in VARIANTS]
        rows.append(f"| {vendor} | " + " | ".join(cells) + " |")
    per_client = {m: results[VENDORS[0]][m][0]["bytes_up_per_round"] / results[VENDORS[0]][m][0]["clients"]
                  for m in VARIANTS}
    wall = {m: np.mean([r["wall_s"] for v in VENDORS for r in results[v][m]]) for m in VARIANTS}
    md = (f"# FedCLIP vs FedAvg, leave-one-domain-out over the emoji vendors\n\n"
          f"3 image-only clients (one per training vendor), IID, frozen towers, {args.rounds} rounds x 1 local "
          f"epoch, seeds {', '.join(map(str, seeds))}; held-out vendor's images of the server test emoji.\n\n"
          + head + "\n".join(rows) + "\n\n"
          "| | " + " | ".join(VARIANTS) + " |\n|---" + "|---" * len(VARIANTS) + "|\n"
          "| MB up per client per round | " + " | ".join(f"{per_client[v] / 1e6:.2f}" for v in VARIANTS) + " |\n"
          "| wall s per run | " + " | ".join(f"{wall[v]:.1f}" for v in VARIANTS) + " |\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(md)


if __name__ == "__main__":
    main()
