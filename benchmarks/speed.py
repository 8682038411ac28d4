"""Speed against the alternatives, measured side by side in one invocation; prints the ratios.

    python benchmarks/speed.py [--only startup,fmnist,emoji,demo,scale] [--quick] [--set KEY=VALUE ...]
                               [--variant "KEY=VALUE ..."]... [--out runs/bench-speed]

- ``startup``: ``prepare()`` from cached data (Fashion-MNIST job below, emoji default; target
  at most 2 s) and a 1-round, 1-epoch Fashion-MNIST run's process time above its round loop
  (target at most 3 s).
- ``fmnist``: Fashion-MNIST, Dirichlet(0.5) over 10 image-only clients, LeNet, SGD (lr 0.01,
  momentum 0.9, batch 64), 3 rounds x 2 local epochs and 2 rounds x 6: ``adamodal run`` as a
  whole process, against Flower 1.41's own FedAvg in Flower's simulation engine (one CPU per
  virtual client) and a plain single-process torch loop (``benchmarks/anchors.py``), all on
  the same clients' rows: wall time and the global model's test accuracy. The anchors score
  the final model once, so adamodal runs with ``eval.every=0`` (scored after the last round
  only, its clients too). Targets: adamodal at most 0.6x Flower's wall time, accuracy within
  0.5 point.
- ``emoji``: the emoji default (fedavg, 20 clients) for 10 rounds: ``adamodal run`` as a
  process against the same job under Flower's simulation engine (``flwr run`` against a
  simulation SuperLink, adamodal's ServerApp/ClientApp). Target: at least 12x faster.
- ``demo``: ``adamodal demo`` as a process, data cached. Target: under 45 s.
- ``scale``: 1,000 Fashion-MNIST clients at participation 0.1 (LeNet, 1 local epoch): peak
  RSS of the run. Target: under 4 GB.

``--set`` adds config keys to every adamodal run of ``fmnist``/``emoji`` as one more variant
(a row of its own beside the defaults); ``--variant`` adds further variants. ``--quick``:
1 round x 1 epoch (fmnist), 3 rounds (emoji), 1 round (scale), no demo unless ``--only``
names it. Tables go to stdout, everything to OUT/speed.json. Times on a shared machine are
inflated by whatever else runs: compare the numbers within one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from performance import run as adamodal_run  # noqa: E402
from performance import table, timed_process  # noqa: E402

FMNIST = {"dataset": "fmnist", "towers": "small", "model": "cnn", "clients.multimodal": 0, "clients.image_only": 10,
          "clients.text_only": 0, "partition": "dirichlet", "partition.alpha": 0.5, "optimizer": "sgd",
          "lr": 0.01, "momentum": 0.9, "batch_size": 64, "participation": 1.0}
EMOJI = {"method": "fedavg"}


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def export_clients(values: dict[str, Any], path: Path) -> dict[str, int]:
    """adamodal's own prepared scenario, written as plain arrays for the anchors: each
    client's training rows and the server's test set."""
    import numpy as np

    from adamodal.config import resolve
    from adamodal.runtime.simulator import prepare

    exp = prepare(resolve({}, values), progress=False)
    arrays: dict[str, Any] = {"clients": np.array(len(exp.clients))}
    for c in exp.clients:
        arrays[f"x{c.cid}"] = c.train.x_img.numpy()
        arrays[f"y{c.cid}"] = c.train.y.numpy()
    arrays["x_test"] = exp.test["image"].x_img.numpy()
    arrays["y_test"] = exp.test["image"].y.numpy()
    np.savez(path, **arrays)
    return {"train_rows": sum(len(c.train) for c in exp.clients), "test_rows": len(exp.test["image"])}


def anchor(which: str, data: Path, out: Path, rounds: int, epochs: int) -> dict[str, float]:
    res = out / f"{which}-{rounds}x{epochs}.json"
    wall, rss = timed_process([sys.executable, str(ROOT / "benchmarks" / "anchors.py"), which, str(data), str(res),
                               "--rounds", str(rounds), "--epochs", str(epochs)])
    return {"wall_s": wall, "peak_rss_mb": rss, **json.loads(res.read_text())}


def bench_fmnist(out: Path, variants: dict[str, dict[str, Any]], jobs: list[tuple[int, int]]) -> tuple[str, list]:
    info = export_clients(FMNIST, out / "fmnist-clients.npz")
    rows, records = [], []
    for rounds, epochs in jobs:
        res: dict[str, dict[str, float]] = {}
        for label, extra in variants.items():
            s = adamodal_run(f"fmnist-{rounds}x{epochs}-{label}", out, **FMNIST, **extra, rounds=rounds,
                             local_epochs=epochs, **{"eval.every": 0})
            res[label] = {"wall_s": s["_wall_process_s"], "loop_s": s["wall_s"], "peak_rss_mb": s["_peak_rss_mb"],
                          "accuracy": s["test"]["image"]["accuracy"]}
        res["flower"] = anchor("flower", out / "fmnist-clients.npz", out, rounds, epochs)
        res["plain"] = anchor("plain", out / "fmnist-clients.npz", out, rounds, epochs)
        fl = res["flower"]
        for label, r in res.items():
            name = {"flower": "Flower FedAvg, simulation engine (num_cpus=1)",
                    "plain": "plain torch loop, one process"}.get(label, f"adamodal run ({label})")
            ratio = r["wall_s"] / fl["wall_s"]
            loop = f"{r['loop_s']:.1f}" if "loop_s" in r else "–"
            rows.append([f"{rounds}x{epochs}", name, f"{r['wall_s']:.1f}", loop,
                         f"{ratio:.2f}", f"{100 * r['accuracy']:.2f}", f"{100 * (r['accuracy'] - fl['accuracy']):+.2f}"])
            records.append({"job": f"{rounds}x{epochs}", "runtime": label, **r, "wall_vs_flower": ratio})
    md = table(f"Fashion-MNIST, Dir(0.5), 10 clients, LeNet ({info['train_rows']:,} training rows, "
               f"{info['test_rows']:,} test rows); target: adamodal <= 0.60x Flower, accuracy within 0.5 point",
               ["rounds x epochs", "runtime", "process wall s", "loop s", "wall / Flower", "test acc %",
                "acc - Flower (points)"], rows)
    return md, records


def bench_emoji(out: Path, variants: dict[str, dict[str, Any]], rounds: int) -> tuple[str, list]:
    from adamodal.config import resolve
    from adamodal.flower.localhost import Consortium
    from adamodal.flower.processes import submit

    res: dict[str, dict[str, float]] = {}
    for label, extra in variants.items():
        s = adamodal_run(f"emoji-{label}", out, **EMOJI, **extra, rounds=rounds)
        res[label] = {"wall_s": s["_wall_process_s"], "loop_s": s["wall_s"], "auc": s["test"]["both"]["macro_auc"]}
    t0 = time.perf_counter()
    with Consortium(out / "emoji-flower-procs", simulation=True) as c:
        c.start_superlink()
        r = submit(resolve({}, {**EMOJI, "rounds": rounds}), out / "emoji-flower", superlink=c.address,
                   certificates=None, insecure=True, simulation=True, force=True, poll_s=0.5, log=lambda s: None)
    if not r.ok:
        raise SystemExit(f"Flower simulation failed: {r}")
    s = json.loads((out / "emoji-flower" / "summary.json").read_text())
    res["flower"] = {"wall_s": time.perf_counter() - t0, "loop_s": s["wall_s"], "auc": s["test"]["both"]["macro_auc"]}
    fl = res["flower"]["wall_s"]
    rows, records = [], []
    for label, r in res.items():
        name = "flwr run, simulation engine" if label == "flower" else f"adamodal run ({label})"
        rows.append([name, f"{r['wall_s']:.1f}", f"{r['loop_s']:.1f}", f"{fl / r['wall_s']:.1f}", f"{r['auc']:.4f}"])
        records.append({"runtime": label, **r, "speedup_vs_flower": fl / r["wall_s"]})
    md = table(f"Emoji default, fedavg, 20 clients, {rounds} rounds; target: adamodal >= 12x faster than Flower",
               ["runtime", "process wall s", "loop s", "Flower / this", "test macro-AUC (both)"], rows)
    return md, records


#: ``adamodal`` with the CPU seconds of the server loop (``Simulator.run``) written to argv[1]
LOOP_CPU = """
import sys, time
from adamodal.runtime import simulator
from adamodal.cli import entry
inner, cpu_file = simulator.Simulator.run, sys.argv[1]
def run(self, *args, **kwargs):
    start = time.process_time()
    try:
        return inner(self, *args, **kwargs)
    finally:
        open(cpu_file, "w").write(str(time.process_time() - start))
simulator.Simulator.run = run
sys.argv = ["adamodal", *sys.argv[2:]]
entry()  # as the `adamodal` command runs, its fast exit included
"""


def bench_startup(out: Path) -> tuple[str, list]:
    """The fixed cost: ``prepare()`` from cached data (a child process, timed after its imports),
    and a 1-round, 1-epoch Fashion-MNIST run's process time above its round loop. CPU seconds
    beside wall seconds: on a shared machine they move much less with the load."""
    code = ("import sys, time; from adamodal.config import resolve; from adamodal.runtime.simulator import prepare; "
            "import json; cfg = resolve({}, json.loads(sys.argv[1])); t, c = time.perf_counter(), time.process_time(); "
            "prepare(cfg, progress=False); print(time.perf_counter() - t, time.process_time() - c)")
    rows, records = [], []
    for name, values in (("Fashion-MNIST, 10 clients, LeNet", FMNIST), ("emoji default (20 clients)", {})):
        got = subprocess.run([sys.executable, "-c", code, json.dumps(values)], capture_output=True, text=True, check=True)
        wall, cpu = (float(v) for v in got.stdout.split()[-2:])
        rows.append([f"prepare(): {name}, data cached", f"{wall:.2f}", f"{cpu:.2f}", "", "", "<= 2 s"])
        records.append({"what": "prepare", "job": name, "wall_s": wall, "cpu_s": cpu})
    run_dir = out / "runs" / "startup-fmnist-1x1"
    sets = [f"{k}={v}" for k, v in {**FMNIST, "rounds": 1, "local_epochs": 1}.items()]
    loop_cpu = out / "startup-loop-cpu.txt"
    wall, rss, cpu = timed_process([sys.executable, "-c", LOOP_CPU, str(loop_cpu), "run", "--quiet", "--force",
                                    "--out", str(run_dir), "--set", *sets], cpu=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    fixed, fixed_cpu = wall - summary["wall_s"], cpu - float(loop_cpu.read_text())
    rows.append(["adamodal run: Fashion-MNIST, 1 round x 1 epoch (process)", f"{wall:.2f}", f"{cpu:.2f}",
                 f"{summary['wall_s']:.2f}", f"{fixed:.2f} (CPU {fixed_cpu:.2f})", "process - loop <= 3 s"])
    records.append({"what": "run-1x1", "wall_s": wall, "cpu_s": cpu, "loop_s": summary["wall_s"], "fixed_s": fixed,
                    "fixed_cpu_s": fixed_cpu, "time_s": summary["time_s"], "peak_rss_mb": rss})
    md = table("Fixed cost: preparing a scenario from cached data, and a short run's process time above its loop",
               ["what", "wall s", "CPU s", "loop s", "process - loop s", "target"], rows)
    return md, records


def bench_demo(out: Path) -> tuple[str, list]:
    wall, rss = timed_process([sys.executable, "-m", "adamodal.cli", "demo", "--quiet", "--out", str(out / "demo")])
    md = table("`adamodal demo` (= `make demo` with the venv installed and data cached); target: under 45 s",
               ["command", "wall s", "peak RSS MB (largest process)"], [["adamodal demo", f"{wall:.1f}", f"{rss:.0f}"]])
    return md, [{"wall_s": wall, "peak_rss_mb": rss}]


def bench_scale(out: Path, rounds: int) -> tuple[str, list]:
    s = adamodal_run("scale-1000", out, dataset="fmnist", method="fedavg", towers="small", model="cnn",
                     **{"clients.multimodal": 0, "clients.image_only": 1000, "clients.text_only": 0},
                     partition="dirichlet", participation=0.1, rounds=rounds, local_epochs=1, batch_size=32,
                     **{"eval.every": rounds, "eval.max_rows": 200})
    md = table(f"1,000 Fashion-MNIST clients, participation 0.1, {rounds} round(s); target: peak RSS under 4 GB",
               ["clients", "process wall s", "loop s", "peak RSS MB"],
               [[1000, f"{s['_wall_process_s']:.1f}", f"{s['wall_s']:.1f}", f"{s['_peak_rss_mb']:.0f}"]])
    return md, [{"wall_s": s["_wall_process_s"], "loop_s": s["wall_s"], "peak_rss_mb": s["_peak_rss_mb"]}]


def parse_variant(text: list[str]) -> dict[str, Any]:
    from adamodal.config import parse_assignments

    return parse_assignments(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated subset of: startup, fmnist, emoji, demo, scale")
    p.add_argument("--quick", action="store_true", help="fewer rounds and epochs; no demo unless --only names it")
    p.add_argument("--set", dest="assignments", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config keys for every adamodal run, measured as one more variant (e.g. workers=2)")
    p.add_argument("--variant", action="append", default=[], metavar='"KEY=VALUE ..."',
                   help="a further variant of the adamodal runs (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-speed")
    args = p.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"startup", "fmnist", "emoji", "demo", "scale"}
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    want = only or ({"startup", "fmnist", "emoji", "scale"} if args.quick else {"startup", "fmnist", "emoji", "demo", "scale"})
    variants: dict[str, dict[str, Any]] = {"default": {}}
    for group in ([args.assignments] if args.assignments else []) + [v.split() for v in args.variant]:
        variants[" ".join(group)] = parse_variant(group)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_start": load_average(),
                              "cpus": os.cpu_count(), "quick": args.quick, "variants": variants}
    parts = []
    if "startup" in want:
        md, report["startup"] = bench_startup(args.out)
        parts.append(md)
        print(md, flush=True)
    if "fmnist" in want:
        jobs = [(1, 1)] if args.quick else [(3, 2), (2, 6)]
        md, report["fmnist"] = bench_fmnist(args.out, variants, jobs)
        parts.append(md)
        print(md, flush=True)
    if "emoji" in want:
        md, report["emoji"] = bench_emoji(args.out, variants, 3 if args.quick else 10)
        parts.append(md)
        print(md, flush=True)
    if "demo" in want:
        md, report["demo"] = bench_demo(args.out)
        parts.append(md)
        print(md, flush=True)
    if "scale" in want:
        md, report["scale"] = bench_scale(args.out, 1 if args.quick else 3)
        parts.append(md)
        print(md, flush=True)
    report["load_average_end"] = load_average()
    note = (f"load average (1/5/15 min) at the start {report['load_average_start']}, at the end "
            f"{report['load_average_end']}, on {report['cpus']} CPUs")
    print(note)
    (args.out / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "speed.md").write_text("\n".join(parts) + f"\n{note}\n")
    print(f"wrote {args.out}/speed.json, speed.md")


if __name__ == "__main__":
    main()
