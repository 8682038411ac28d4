"""AdaModal-Fed's stages, each switched off in turn, on named scenarios: what each buys, and
which configuration the clients' VALIDATION splits prefer (also for a baseline's own knob: the
``fedavg with ...`` variants run FedAvg with modality dropout at two rates).

For every scenario x seed x variant it runs the method in process, then scores the final
global model twice:
- on every client's own validation split (each row with the modalities its client has),
  predictions pooled per client group: the selection score is the mean over groups. This is
  the number a default may be chosen on;
- on the server's test views (``groups_server_test``), the number the tables report.
A run's record is cached under ``--out`` with a digest of its config, so a killed sweep
resumes and a record made under other defaults is run again.

    .venv/bin/python benchmarks/adamodal_ablation.py [--scenarios few-multimodal,aligned-skew]
        [--seeds 0,1,2] [--out runs/bench-ablation]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from adamodal.config import resolve
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import predict
from adamodal.metrics import compute_metrics
from adamodal.runtime.simulator import Simulator, prepare
from adamodal.suite import digest

VARIANTS = {
    "default": {},
    "cross-attention imputation (impute=cross_attention)": {"adamodal.impute": "cross_attention"},
    "no kd": {"adamodal.kd": "false"},
    "no gate": {"adamodal.gate": "false"},
    "beta=0": {"adamodal.beta": "0"},
    "no modality dropout": {"adamodal.modality_dropout": "0"},
    "low-rank projections (rank=32)": {"adamodal.rank": "32", "adamodal.adapter_rank": "32"},
    "float16 uploads": {"adamodal.upload_precision": "float16"},
    "int8 delta uploads": {"adamodal.upload_precision": "int8"},
    "round-1 train phase": {"adamodal.round1_train": "true"},
    "no InfoNCE": {"adamodal.infonce_weight": "0"},
    "label-aware pairing + cross-attention imputation": {"adamodal.impute": "cross_attention",
                                                        "adamodal.match_labels": "1"},
    "label-aware pairing + matched-centroid imputation": {"adamodal.impute": "cross_attention",
                                                         "adamodal.cross_attention": "false",
                                                         "adamodal.match_labels": "1"},
    "modality parts averaged over all clients": {"adamodal.modality_average": "all"},
    "all-client averaging + beta=0": {"adamodal.modality_average": "all", "adamodal.beta": "0"},
    "modality parts averaged over their holders only": {"adamodal.modality_average": "holders"},
    "one epoch each of warm-up and kd": {"adamodal.warmup_epochs": "1", "adamodal.kd_epochs": "1"},
    "modality dropout 0.5": {"adamodal.modality_dropout": "0.5"},
    "modality dropout 0.1": {"adamodal.modality_dropout": "0.1"},
    "modality dropout 0.9": {"adamodal.modality_dropout": "0.9"},
    "k=64 server centres": {"adamodal.k": "64"},
    "k=16 server centres": {"adamodal.k": "16"},
    "k=128 server centres": {"adamodal.k": "128"},
    "k=64 + modality dropout 0.5": {"adamodal.k": "64", "adamodal.modality_dropout": "0.5"},
    "3 teachers -> 1": {"adamodal.kd_teachers": "1"},
    "contribution by validation score": {"adamodal.contribution": "score"},
    "gate temperature tau=2": {"adamodal.tau": "2"},
    "matched-centroid imputation": {"adamodal.impute": "cross_attention", "adamodal.cross_attention": "false"},
    # the baseline's own rate, chosen on the same validation scores (the suite's fedavg_dropout)
    "class-prototype replay 0.5": {"adamodal.replay": "0.5"},
    "class-prototype replay 0.1": {"adamodal.replay": "0.1"},
    "fedavg with modality dropout 0.3": {"method": "fedavg", "fedavg.modality_dropout": "0.3"},
    "fedavg with modality dropout 0.9": {"method": "fedavg", "fedavg.modality_dropout": "0.9"},
}
GROUPS = ("multimodal", "image_only", "text_only")


def one_run(scenario: str, seed: int, overrides: dict[str, str], run_dir: Path) -> dict:
    record = run_dir / "record.json"
    cfg = resolve({}, {"scenario": scenario, "method": "adamodal", "seed": seed, **overrides})
    want = digest(cfg)
    if record.exists():
        cached = json.loads(record.read_text())
        if cached.get("digest") == want:  # the same config: defaults may have moved since
            return cached
    exp = prepare(cfg, progress=False)
    sim = Simulator(exp, run_dir, progress=False)
    summary = sim.run()
    model = sim.method.global_model()
    val = {}
    for g in GROUPS:
        members = [c.val for c in exp.clients if c.group == g and len(c.val)]
        if members:
            data = Tensors.concat(members)
            val[g] = compute_metrics(predict(model, data, exp.spec.task), data.y.numpy(), exp.spec.task)["macro_auc"]
    out = {"digest": want, "val": val, "test": {g: m["macro_auc"] for g, m in summary["groups_server_test"].items()},
           "bytes_up_per_round": summary["bytes_up_per_round"], "wall_s": summary["wall_s"]}
    record.write_text(json.dumps(out, indent=1))
    return out


def _cell(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="few-multimodal,aligned-skew")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ablation"))
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v for v in args.variants.split(",") if v]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:  # names are split on commas, so a name must not hold one
        raise SystemExit(f"--variants: unknown {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
    lines = []
    for scenario in [s for s in args.scenarios.split(",") if s]:
        rows = {}
        for name in names:
            rows[name] = [one_run(scenario, seed, VARIANTS[name], args.out / scenario / name.replace(" ", "_")
                                  / f"seed{seed}") for seed in seeds]
            print(f"{scenario} {name}: done", flush=True)
        groups = [g for g in GROUPS if any(g in r["test"] for rs in rows.values() for r in rs)]
        score = {n: np.mean([np.nanmean([r["val"][g] for g in groups if g in r["val"]]) for r in rs])
                 for n, rs in rows.items()}
        best = max(score, key=score.get)
        lines += [f"\n### {scenario} (seeds {args.seeds})\n",
                  "| variant | validation score | " + " | ".join(f"val {g}" for g in groups) + " | "
                  + " | ".join(f"server test {g}" for g in groups) + " | MB up/round |",
                  "|---|---|" + "---|" * (2 * len(groups)) + "---|"]
        for n, rs in rows.items():
            cells = [_cell([r["val"].get(g) for r in rs]) for g in groups]
            cells += [_cell([r["test"].get(g) for r in rs]) for g in groups]
            mark = " (best on validation)" if n == best else ""
            lines.append(f"| {n}{mark} | {score[n]:.3f} | " + " | ".join(cells)
                         + f" | {np.mean([r['bytes_up_per_round'] for r in rs]) / 1e6:.2f} |")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("# AdaModal-Fed ablations\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
