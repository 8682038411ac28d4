"""What differential privacy costs on the emoji default: epsilon (RDP accountant, delta 1e-5,
under the run's ``dp.adjacency``, replace-one by default) and macro-AUC against the same run
without DP, for client-level DP of FedAvg's uploads (both modes) and AdaModal-Fed's noised
summaries. Also the honest clients' update norms, which the ``max_update_norm`` default must
stay far above.

    .venv/bin/python benchmarks/dp_cost.py [--rounds 20] [--seed 0] [--out runs/bench-dp]

Writes OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from adamodal.config import resolve
from adamodal.runtime.simulator import Simulator, prepare
from adamodal.runtime.validate import update_norm

VARIANTS = {
    "fedavg": {"method": "fedavg"},
    "fedavg dp client z=1 C=1": {"method": "fedavg", "dp.noise": 1.0},
    "fedavg dp server z=1 C=1": {"method": "fedavg", "dp.noise": 1.0, "dp.mode": "server"},
    "fedavg dp server z=0.3 C=1": {"method": "fedavg", "dp.noise": 0.3, "dp.mode": "server"},
    "adamodal": {"method": "adamodal"},
    "adamodal dp_sigma=4": {"method": "adamodal", "adamodal.dp_sigma": 4.0},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    args = p.parse_args()
    base = {"rounds": args.rounds, "seed": args.seed, "device": "cpu"}
    exp = prepare(resolve({}, base), progress=False)
    rows = {}
    for name in args.variants.split(","):
        cfg = resolve({}, {**base, **VARIANTS[name]})
        sim = Simulator(dataclasses.replace(exp, cfg=cfg), args.out / name.replace(" ", "_"), progress=False)
        norms: list[float] = []
        step = sim.clients.step

        def recording(phase, rnd, p_idx, messages, step=step, norms=norms):
            replies = step(phase, rnd, p_idx, messages)
            norms.extend(update_norm(r, messages[c]) for c, r in replies.items() if hasattr(r, "arrays"))
            return replies

        sim.clients.step = recording
        t0 = time.perf_counter()
        s = sim.run()
        priv = s.get("privacy") or {}
        rows[name] = {
            "macro_auc_both": s["test"]["both"]["macro_auc"],
            "macro_auc": {g: m["macro_auc"] for g, m in s["groups"].items()},
            "epsilon": priv.get("epsilon"), "delta": priv.get("delta"), "adjacency": priv.get("adjacency"),
            "update_norm_median": float(np.median(norms)) if norms else None,
            "update_norm_max": float(np.max(norms)) if norms else None,
            "wall_s": round(time.perf_counter() - t0, 1), "dropped": len(s["dropped"]),
        }
        print(name, json.dumps(rows[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"DP cost on the emoji default, {args.rounds} rounds, seed {args.seed}", "",
             "| variant | epsilon (delta 1e-5; adjacency) | server test macro-AUC | image+text | image-only | text-only | update norm median / max |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f} ({r['adjacency']})"
        g = r["macro_auc"]
        lines.append(f"| {name} | {eps} | {r['macro_auc_both']:.3f} | {g.get('multimodal', float('nan')):.3f} | "
                     f"{g.get('image_only', float('nan')):.3f} | {g.get('text_only', float('nan')):.3f} | "
                     f"{r['update_norm_median']:.3g} / {r['update_norm_max']:.3g} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
