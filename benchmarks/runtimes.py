"""Wall time of one job under the three runtimes: the in-process simulator, Flower's
simulation engine (``flwr run`` against a ``--simulation`` SuperLink, one virtual SuperNode per
client) and a localhost deployment (a SuperLink and one SuperNode process per client), the
deployment both with warm ClientApps (the default: one long-lived process per SuperNode) and
with Flower's own per-message ClientApp processes.

    .venv/bin/python benchmarks/runtimes.py [--clients 20] [--rounds 5] [--method fedavg] [--out runs/bench-runtimes]

The job is the emoji default scenario scaled to ``--clients`` (16/2/2 for 20). All three runs
use the same config and seed, so their final metrics are compared too. Writes OUT/results.md.
Times: ``total`` from start to the run's end including starting Flower's processes, ``loop``
the server loop's own ``wall_s`` (rounds and evaluations, from ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adamodal.cache import cache_dir
from adamodal.config import resolve
from adamodal.flower.localhost import Consortium
from adamodal.flower.processes import submit
from adamodal.runtime.simulator import run_experiment


def _scenario(n: int) -> dict[str, int]:
    uni = max(0, round(n * 0.1))
    return {"clients.multimodal": n - 2 * uni, "clients.image_only": uni, "clients.text_only": uni}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--method", default="fedavg")
    p.add_argument("--out", type=Path, default=Path("runs/bench-runtimes"))
    p.add_argument("--skip", default="",
                   help="comma-separated runtimes to skip: simulator,simulation,deployment,per-message")
    args = p.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    values = {**_scenario(args.clients), "rounds": args.rounds, "method": args.method}
    cfg = resolve({}, values)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "runtimes.json"  # kept across invocations (--skip runs one runtime at a time)
    rows = {r[0]: r for r in json.loads(store.read_text())} if store.exists() else {}

    def record(name: str, t0: float, out: Path) -> None:
        s = json.loads((out / "summary.json").read_text())
        rows[name] = (name, time.perf_counter() - t0, s["wall_s"], s["test"]["both"]["macro_auc"], s["bytes_up"])
        store.write_text(json.dumps(list(rows.values()), indent=1))
        print(f"{name}: {rows[name][1]:.1f} s total, {s['wall_s']:.1f} s loop", flush=True)

    if "simulator" not in skip:
        # before and after sharing predictions between clients that hold the same model
        for share, name in ((False, "simulator-per-client-eval"), (True, "simulator")):
            t0 = time.perf_counter()
            run_experiment(resolve({}, {**values, "eval.share_predictions": share}), args.out / name,
                           progress=False, force=True)
            record("in-process simulator" + ("" if share else ", every client scored separately"), t0,
                   args.out / name)
    if "simulation" not in skip:
        t0 = time.perf_counter()
        with Consortium(args.out / "sim-procs", simulation=True) as c:
            c.start_superlink()
            r = submit(cfg, args.out / "simulation", superlink=c.address, certificates=None, insecure=True,
                       simulation=True, force=True, poll_s=1.0, log=lambda s: None)
        assert r.ok, r
        record("flwr run simulation (Ray)", t0, args.out / "simulation")
    for key, clientapp, label in (("deployment", "warm", "warm ClientApps"),
                                  ("per-message", "per-message", "a ClientApp process per message")):
        if key in skip:
            continue
        t0 = time.perf_counter()
        with Consortium(args.out / f"{key}-procs", clientapp=clientapp) as c:
            c.start_superlink()
            c.start_supernodes(list(range(args.clients)), data=cache_dir())
            r = submit(cfg, args.out / key, superlink=c.address, certificates=None, insecure=True,
                       force=True, poll_s=1.0, wait=600, timeout=1800, log=lambda s: None)
        assert r.ok, r
        record(f"localhost deployment ({args.clients} SuperNodes, {label})", t0, args.out / key)

    lines = [f"# Runtimes: {args.method}, {args.clients} clients, {args.rounds} rounds, emoji default\n",
             "| runtime | total s | loop s | test macro-AUC (both) | bytes up |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {t:.1f} | {w:.1f} | {auc:.4f} | {b:,} |" for n, t, w, auc, b in rows.values()]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
