"""Performance benchmarks of the in-process simulator, each printing ratios measured side by side.

    .venv/bin/python benchmarks/performance.py overhead   # fedavg vs central, same sample steps
    .venv/bin/python benchmarks/performance.py scale      # 10 / 100 / 1,000 clients: s/round, peak RSS
    .venv/bin/python benchmarks/performance.py comm       # bytes up/down per client per round, every method
    .venv/bin/python benchmarks/performance.py stages     # AdaModal-Fed wall time per stage
    .venv/bin/python benchmarks/performance.py batched    # batch_clients=N vs one client at a time
    .venv/bin/python benchmarks/performance.py all

Every run is a separate ``adamodal run`` process (so peak RSS is that run's own), with evaluation
only at the last round, so the times are the training rounds'. Tables go to stdout as markdown
and to ``--out``/<name>.md. The machines are noisy: compare numbers within one invocation only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(label: str, out: Path, **overrides: Any) -> dict[str, Any]:
    """One ``adamodal run`` in a child process; its summary plus wall time and peak RSS."""
    run_dir = out / "runs" / label
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "adamodal.cli", "run", "--quiet", "--force", "--out", str(run_dir), "--set", *sets]
    wall, peak = timed_process(cmd)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["_wall_process_s"] = wall
    summary["_peak_rss_mb"] = peak
    return summary


def timed_process(cmd: list[str], cpu: bool = False) -> Any:
    """Wall seconds and peak RSS (MB, Linux reports KiB) of a child process (and its CPU seconds, user + system,
    with ``cpu``); its failure stops the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err[-3000:]}")
    if cpu:
        return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024


def train_s(summary: dict[str, Any]) -> float:
    """Seconds spent in the rounds (every phase and the server's work), evaluation excluded."""
    return sum(v for k, v in summary["time_s"].items() if k != "eval")


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def optimizer_steps(rounds: int) -> tuple[int, int]:
    """Optimizer steps of fedavg (every client, every round, its own mini-batches) and of
    central (the pooled rows) on the emoji default, from the prepared clients."""
    from adamodal.config import resolve
    from adamodal.runtime.simulator import prepare

    cfg = resolve({}, {"rounds": rounds})
    sizes = [len(c.train) for c in prepare(cfg, progress=False).clients]
    epochs, bs = int(cfg["local_epochs"]), int(cfg["batch_size"])
    fed = rounds * epochs * sum(math.ceil(n / bs) for n in sizes)
    return fed, rounds * epochs * math.ceil(sum(sizes) / bs)


def bench_overhead(out: Path, rounds: int) -> str:
    """FedAvg against central training on the same rows for the same epochs: both pass every
    training row ``local_epochs`` times per round, in mini-batches of ``batch_size``. Each
    client's last mini-batch is a partial one, so FedAvg takes more optimizer steps for the
    same sample passes; the time per optimizer step compares the machinery itself."""
    base = {"rounds": rounds, "eval.every": rounds}
    fed = run("overhead-fedavg", out, method="fedavg", **base)
    cen = run("overhead-central", out, method="central", **base)
    steps_fed, steps_cen = optimizer_steps(rounds)
    per_fed, per_cen = 1e3 * train_s(fed) / steps_fed, 1e3 * train_s(cen) / steps_cen
    rows = [
        ["fedavg", f"{train_s(fed):.1f}", steps_fed, f"{per_fed:.2f}", f"{fed['_wall_process_s']:.1f}"],
        ["central", f"{train_s(cen):.1f}", steps_cen, f"{per_cen:.2f}", f"{cen['_wall_process_s']:.1f}"],
        ["ratio fedavg / central", f"{train_s(fed) / train_s(cen):.2f}", f"{steps_fed / steps_cen:.2f}",
         f"{per_fed / per_cen:.2f}", f"{fed['_wall_process_s'] / cen['_wall_process_s']:.2f}"],
    ]
    return table(f"FL overhead: emoji default, {rounds} rounds, same sample-gradient passes",
                 ["run", "round time s", "optimizer steps", "ms / step", "process wall s"], rows)


def bench_scale(out: Path, rounds: int, sizes: list[int]) -> str:
    """Each size twice: scoring every client's model on its server-test view (before) and
    scoring a model once per view that clients share (``eval.share_predictions``, the default)."""
    rows = []
    for n in sizes:
        evals = {}
        for share in (False, True):
            s = run(f"scale-{n}-share{int(share)}", out, dataset="fmnist", method="fedavg", towers="small", model="cnn",
                    **{"clients.multimodal": 0, "clients.image_only": n, "clients.text_only": 0},
                    partition="dirichlet", participation=0.1, rounds=rounds,
                    **{"eval.every": rounds, "eval.max_rows": 200, "eval.share_predictions": share},
                    local_epochs=1, batch_size=32)
            evals[share] = s["time_s"].get("eval", 0)
            rows.append([n, max(1, round(0.1 * n)), "shared" if share else "per client",
                         f"{train_s(s) / rounds:.2f}", f"{evals[share]:.1f}",
                         f"{evals[True] / evals[False]:.2f}" if share and evals[False] else "",
                         f"{s['_wall_process_s']:.1f}", f"{s['_peak_rss_mb']:.0f}", f"{s['test']['image']['accuracy']:.3f}"])
    return table(f"Scale: Fashion-MNIST, Dirichlet 0.5, participation 0.1, LeNet, 1 local epoch, {rounds} rounds, "
                 "every client evaluated before round 1 and after the last (200 server-test rows each)",
                 ["clients", "per round", "server-view scoring", "s / round", "eval s (both)", "eval after / before",
                  "process wall s", "peak RSS MB", "test accuracy"], rows)


def bench_comm(out: Path, rounds: int, methods: list[str]) -> str:
    rows = []
    fedavg_up = None
    for m in methods:
        s = run(f"comm-{m}", out, method=m, rounds=rounds, **{"eval.every": rounds})
        n = sum(s["clients"].values())
        up, down = s["bytes_up"] / (n * rounds), s["bytes_down"] / (n * rounds)
        if m == "fedavg":
            fedavg_up = up
        rows.append([m, f"{up / 1e6:.3f}", f"{down / 1e6:.3f}", up])
    for r in rows:
        r[3] = f"{r[3] / fedavg_up:.2f}" if fedavg_up else "–"
    return table(f"Communication: emoji default (20 clients), {rounds} rounds, per client per round",
                 ["method", "MB up", "MB down", "up vs fedavg"], rows)


def bench_stages(out: Path, rounds: int) -> str:
    s = run("stages-adamodal", out, method="adamodal", rounds=rounds, **{"eval.every": rounds})
    total = sum(s["time_s"].values())
    rows = [[k, f"{v:.2f}", f"{100 * v / total:.0f}%"] for k, v in sorted(s["time_s"].items(), key=lambda kv: -kv[1])]
    return table(f"AdaModal-Fed wall time per stage: emoji default, {rounds} rounds (warmup/teach/kd run in round 1 only)",
                 ["stage", "s", "share"], rows)


def bench_batched(out: Path, rounds: int) -> str:
    base = {"method": "fedavg", "rounds": rounds, "eval.every": rounds}
    seq = run("batched-0", out, batch_clients=0, **base)
    bat = run("batched-20", out, batch_clients=20, **base)
    rows = [
        ["one client at a time", f"{train_s(seq):.1f}", f"{seq['groups_server_test']['image_only']['macro_auc']:.3f}"],
        ["batch_clients=20", f"{train_s(bat):.1f}", f"{bat['groups_server_test']['image_only']['macro_auc']:.3f}"],
        ["ratio batched / sequential", f"{train_s(bat) / train_s(seq):.2f}", ""],
    ]
    return table(f"Batched client training: fedavg, emoji default, {rounds} rounds",
                 ["run", "round time s", "image-only AUC (server view)"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["overhead", "scale", "comm", "stages", "batched", "all"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", default="10,100,1000", help="client counts for 'scale'")
    p.add_argument("--methods", default="local,fedavg,fedavg_group,fedprox,adamodal,central")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-performance")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = {
        "overhead": lambda: bench_overhead(args.out, args.rounds),
        "scale": lambda: bench_scale(args.out, args.rounds, [int(s) for s in args.sizes.split(",")]),
        "comm": lambda: bench_comm(args.out, args.rounds, args.methods.split(",")),
        "stages": lambda: bench_stages(args.out, args.rounds),
        "batched": lambda: bench_batched(args.out, args.rounds),
    }
    for name in (jobs if args.which == "all" else [args.which]):
        md = jobs[name]()
        print(md)
        (args.out / f"{name}.md").write_text(md)


if __name__ == "__main__":
    main()
