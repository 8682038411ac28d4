"""AdaModal-Fed ablations on the emoji default: each stage switched off in turn, the imputation
choices, and a sweep of the server's cluster count K. FedAvg is the reference row.

    .venv/bin/python benchmarks/adamodal_ablation.py [--seeds 0,1,2] [--out runs/bench-ablation]

Writes OUT/ablation/results.md and OUT/k_sweep/results.md (+ comparison.png in each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adamodal.bench import run_variants

ABLATIONS = {
    "fedavg": {"method": "fedavg"},
    "adamodal": {"method": "adamodal"},
    "no kd": {"method": "adamodal", "adamodal.kd": "false"},
    "no cluster": {"method": "adamodal", "adamodal.cluster": "false"},
    "no cross-attention": {"method": "adamodal", "adamodal.cross_attention": "false"},
    "no gate": {"method": "adamodal", "adamodal.gate": "false"},
    "impute=zero": {"method": "adamodal", "adamodal.impute": "zero"},
    "impute=mean": {"method": "adamodal", "adamodal.impute": "mean"},
}
K_VALUES = (4, 8, 16, 32, 64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ablation"))
    p.add_argument("--skip-k", action="store_true", help="only the ablation table")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run_variants(ABLATIONS, seeds, {}, args.out / "ablation", quiet=True, title="AdaModal-Fed ablations")
    if not args.skip_k:
        sweep = {f"K={k}": {"method": "adamodal", "adamodal.k": str(k)} for k in K_VALUES}
        run_variants(sweep, seeds, {}, args.out / "k_sweep", quiet=True, title="AdaModal-Fed: server clusters K")


if __name__ == "__main__":
    main()
