"""FedAvg on the emoji default with hostile clients: some crash every round, one sends NaN, one
an update of absurd norm, one poisons its weights (x -20, finite, right shape). Reports what was
dropped and the server-test macro-AUC with aggregation=mean and =median.

    .venv/bin/python benchmarks/faults.py [--rounds 20] [--out runs/bench-faults]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from adamodal.config import resolve
from adamodal.runtime.simulator import Simulator, prepare

CRASH = {2, 7, 11, 17}  # raise in every step
NAN, HUGE, POISON = 4, 9, 14


def hostile(sim: Simulator) -> None:
    original = sim.method.client_step

    def client_step(phase, rnd, ctx, msg):
        if ctx.cid in CRASH:
            raise RuntimeError("site offline")
        reply = original(phase, rnd, ctx, msg)
        f = {k for k, v in reply.arrays.items() if v.dtype.kind == "f"}
        if ctx.cid == NAN:
            reply.arrays = {k: np.full_like(v, np.nan) if k in f else v for k, v in reply.arrays.items()}
        elif ctx.cid == HUGE:
            reply.arrays = {k: v * 1e4 if k in f else v for k, v in reply.arrays.items()}
        elif ctx.cid == POISON:
            reply.arrays = {k: v * -20 if k in f else v for k, v in reply.arrays.items()}
        return reply

    sim.method.client_step = client_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/bench-faults"))
    args = p.parse_args()
    base = {"rounds": args.rounds, "device": "cpu", "method": "fedavg"}
    exp = prepare(resolve({}, base), progress=False)
    rows = {}
    for rule in ("mean", "median"):
        cfg = resolve({}, {**base, "aggregation": rule})
        sim = Simulator(dataclasses.replace(exp, cfg=cfg), args.out / rule, progress=False)
        hostile(sim)
        s = sim.run()
        kinds = Counter(d["reason"].split(":")[0].split(" (")[0] for d in s["dropped"])
        rows[rule] = {"macro_auc_both": s["test"]["both"]["macro_auc"], "dropped": len(s["dropped"]),
                      "dropped_by_reason": dict(kinds), "dropped_clients": sorted({d["client"] for d in s["dropped"]})}
        print(rule, json.dumps(rows[rule]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
