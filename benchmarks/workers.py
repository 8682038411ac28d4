"""Clients in process vs in worker processes (``workers``), side by side in one invocation.

    .venv/bin/python benchmarks/workers.py [--jobs fedavg,adamodal,fmnist] [--workers 1,2,0] [--reps 1]

Each (job, workers) is a separate ``adamodal run`` process, run in turn (alternating the order
of the variants between repetitions). Reported per run: the process's wall time (start-up,
data, the loop and the end), the loop's ``wall_s``, and memory: the run process's own peak RSS
and the peak of the proportional set size (PSS) summed over it and every process it started
(its workers and their fork server), sampled every 0.1 s (PSS counts the pages the workers
share with the fork server once); and the CPU seconds of all of them (what the workers cost
whatever the machine's load: their start-up and the messages to and from them). ``workers=0`` is the automatic choice. The machine is shared:
compare numbers within one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

JOBS: dict[str, dict[str, Any]] = {
    # the emoji default (20 clients, 20 rounds)
    "fedavg": {"method": "fedavg"},
    # AdaModal-Fed on the emoji default; 3 rounds (round 1 has its six phases)
    "adamodal": {"method": "adamodal", "rounds": 3},
    # Fashion-MNIST, LeNet trained from scratch (towers=small), 20 image clients
    "fmnist": {"dataset": "fmnist", "towers": "small", "model": "cnn", "method": "fedavg", "clients.multimodal": 0,
               "clients.image_only": 20, "clients.text_only": 0, "optimizer": "sgd", "lr": 0.05,
               "data.max_items": 20000, "eval.max_rows": 1000, "rounds": 5},
}


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(label: str, out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    run_dir = out / label
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "adamodal.cli", "run", "--quiet", "--force", "--out", str(run_dir), "--set", *sets]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    cpu: dict[int, float] = {}  # the most CPU time seen per process (they end before the run)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in pids))
            for p in pids:
                cpu[p] = max(cpu.get(p, 0.0), _cpu_s(p))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label}: adamodal run failed:\n{err[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    cpu[proc.pid] = usage.ru_utime + usage.ru_stime  # the run process's own, exactly
    return {"wall": wall, "loop": summary["wall_s"], "rss": usage.ru_maxrss / 1024, "pss": peak[0] / 1024,
            "cpu": sum(cpu.values()),
            "auc": summary["test"].get("both", summary["test"].get("image", {})).get("macro_auc"),
            "time_s": summary["time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--workers", default="1,2,0", help="values of `workers` to compare (0 = automatic)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/adamodal-bench-workers"))
    args = ap.parse_args()
    variants = [int(w) for w in args.workers.split(",")]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for job in args.jobs.split(","):
        for rep in range(args.reps):
            for w in variants if rep % 2 == 0 else variants[::-1]:
                r = run(f"{job}-w{w}-r{rep}", args.out, {**JOBS[job], "seed": 0, "workers": w})
                results.setdefault((job, w), []).append(r)
                print(f"{job} workers={w} rep {rep}: process {r['wall']:.1f} s, loop {r['loop']:.1f} s, "
                      f"CPU {r['cpu']:.1f} s, peak RSS {r['rss']:.0f} MB, peak PSS (all processes) {r['pss']:.0f} MB, AUC {r['auc']}, "
                      f"{r['time_s']}", flush=True)
    print(f"\nload average at end: {os.getloadavg()}\n")
    print("| job | workers | process s | loop s | loop vs workers=1 | CPU s (all processes) "
          "| peak RSS MB (run process) | peak PSS MB (all processes) | test macro-AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (job, w), rs in results.items():
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("wall", "loop", "cpu", "rss", "pss")}
        base = results[(job, 1)] if (job, 1) in results else rs
        ratio = mean["loop"] / (sum(r["loop"] for r in base) / len(base))
        print(f"| {job} | {w if w else 'auto'} | {mean['wall']:.1f} | {mean['loop']:.1f} | {ratio:.2f} | {mean['cpu']:.0f} "
              f"| {mean['rss']:.0f} | {mean['pss']:.0f} | {rs[0]['auc']:.4f} |")


if __name__ == "__main__":
    main()
