"""Every method on the emoji default (16 image+text / 2 image-only / 2 text-only clients,
Dirichlet 0.5), the same clients, splits and seeds; mean ± std over seeds.

    .venv/bin/python benchmarks/compare_methods.py [--seeds 0,1,2] [--out runs/bench-methods]

Writes OUT/results.md (macro-AUC and macro-F1 per client group, bytes up per round) and
OUT/comparison.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adamodal.bench import run_bench

# retrieval needs split.public > 0 and runs in benchmarks/missing_modality.py, where every
# scenario holds the public set out for every method alike
METHODS = ["local", "fedavg", "fedavg_group", "fedprox", "prototype", "adamodal", "central"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    args = p.parse_args()
    run_bench(args.methods.split(","), [int(s) for s in args.seeds.split(",")], {}, args.out, quiet=True,
              title="Methods on the emoji default")


if __name__ == "__main__":
    main()
