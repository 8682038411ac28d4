"""The ``adamodal`` command line.

Exit codes: 0 success; 1 bad data, a failed fetch or a failed run; 2 a bad command line or
config (unknown key, invalid value); 130 interrupted. Errors are one line on stderr, never a
traceback (set ``ADAMODAL_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from adamodal import __version__
from adamodal.errors import AdamodalError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with config keys (flat dotted keys or tables)")
    p.add_argument("--set", dest="assignments", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set method=fedprox fedprox.mu=0.1 (see `adamodal config`)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from adamodal.config import load_toml, parse_assignments, resolve

    file_values = load_toml(args.config) if getattr(args, "config", None) else {}
    overrides = dict(extra or {})
    overrides.update(parse_assignments(args.assignments))
    return resolve(file_values, overrides)


def _import_in_background(*modules: str) -> None:
    """Import modules needed only at the end of a command (the plot's matplotlib, about a
    second) on a daemon thread while the run works: torch releases the GIL in its kernels,
    so the import overlaps the round loop instead of adding to the process time. A failure
    here is silent; the import in the foreground then reports it."""
    import importlib
    import threading

    def load() -> None:
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001 - reported by the foreground import
                return

    threading.Thread(target=load, name="late-imports", daemon=True).start()


def cmd_run(args: argparse.Namespace) -> int:
    _import_in_background("matplotlib.figure", "matplotlib.backends.backend_agg")
    from adamodal.config import load_toml, resolve
    from adamodal.runtime.forkserver import start_early

    if args.resume:
        out = Path(args.resume)
        cfg = resolve(load_toml(out / "config.toml"))
    else:
        cfg = _resolve(args)
        out = args.out or Path("runs") / f"{cfg['dataset']}-{cfg['method']}-s{cfg['seed']}"
    if int(cfg["workers"]) > 1:  # asked for workers: their fork server imports torch meanwhile
        start_early()
    from adamodal.report import plot_history, print_table, run_rows
    from adamodal.runtime.simulator import run_experiment

    summary = run_experiment(cfg, out, progress=not args.quiet, resume=bool(args.resume), force=args.force)
    plot_history(summary, out / "history.png")
    header, rows = run_rows(summary)
    print_table(header, rows, title=f"{summary['method']} on {summary['dataset']}: {summary['rounds']} rounds, "
                f"{summary['wall_s']:.1f} s, {summary['bytes_up'] / 1e6:.2f} MB up")
    print(f"wrote {out}/summary.json, metrics.jsonl, config.toml, history.png")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from adamodal.config import load_toml, parse_assignments

    base = load_toml(args.config) if args.config else {}
    base.update(parse_assignments(args.assignments))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    _resolve(args)  # validate once before spending time
    from adamodal.methods import get_method_class

    for m in methods:
        get_method_class(m)
    from adamodal.bench import run_bench

    run_bench(methods, seeds, base, args.out, quiet=args.quiet, title="Method comparison", jobs=args.jobs)
    return 0


#: the demo scores the clients after every DEMO_EVAL_EVERY-th round (and before the first, and after the last)
DEMO_EVAL_EVERY = 2


def cmd_demo(args: argparse.Namespace) -> int:
    from adamodal.bench import run_bench

    t0 = time.perf_counter()
    _import_in_background("matplotlib.figure", "matplotlib.backends.backend_agg")  # for the closing plots
    # the curves scored every other round: a third of the demo's work was scoring every round,
    # and scoring changes nothing a run learns (the final table is the same)
    run_bench(["local", "fedavg", "adamodal", "central"], [0], {"eval.every": DEMO_EVAL_EVERY}, args.out,
              quiet=args.quiet, title="adamodal demo (default scenario)", jobs=args.jobs)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; plots: {args.out}/comparison.png, "
          f"{args.out}/<method>/seed0/history.png")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Exit 0 and a summary when the data is fine, else exit 1 and one line per problem."""
    import numpy as np

    from adamodal.cache import cache_dir
    from adamodal.config import load_toml, parse_assignments, resolve
    from adamodal.data import dataset_names
    from adamodal.data.check import check, client_rows, label_rows
    from adamodal.report import print_table

    overrides = parse_assignments(args.assignments)
    if args.name in dataset_names():
        overrides["dataset"] = args.name
    cfg = resolve(load_toml(args.config) if args.config else {}, overrides)
    options = {name: cfg.section(name) for name in dataset_names()}
    name, bundle, problems = check(args.name, options, cache_dir())
    if problems or bundle is None:
        for line in problems.lines():
            print(line)
        print(f"adamodal: {args.name} ({name}): {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.name} ({name}): {len(bundle)} samples, {len(np.unique(bundle.groups))} patients, "
          f"{bundle.task}, {bundle.num_classes} classes")
    header, rows = client_rows(bundle)
    print_table(header, rows, title="samples per client and modality")
    header, rows = label_rows(bundle)
    print_table(header, rows, title="labels")
    print(f"OK: no problems found in {args.name}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from adamodal.cache import cache_dir
    from adamodal.data import get_source

    if args.action == "check":
        return cmd_data_check(args)
    cfg = _resolve(args, {"dataset": args.name})
    source = get_source(args.name, cfg.section(args.name))
    if args.action == "fetch":
        t0 = time.perf_counter()
        path = source.fetch(cache_dir())
        print(f"{args.name}: fetched into {path} ({time.perf_counter() - t0:.1f} s)")
        return 0
    import numpy as np

    from adamodal.data.scenario import build_scenario
    from adamodal.errors import DataError

    bundle = source.load(cache_dir())
    print(f"dataset   {bundle.name}: {source.description}")
    print(f"task      {bundle.task}, {bundle.num_classes} classes")
    print(f"items     {len(bundle)} ({len(np.unique(bundle.groups))} identity groups)")
    print(f"modalities {', '.join(bundle.modalities)}")
    if bundle.images is not None:
        print(f"images    {bundle.images.shape[2]}x{bundle.images.shape[3]}x{bundle.images.shape[4]}, "
              f"domains: {', '.join(bundle.domains)}")
    for k, v in bundle.meta.items():
        print(f"{k:<9} {v}")
    cls = bundle.class_ids()
    counts = np.bincount(cls, minlength=bundle.num_classes)
    print("classes   " + ", ".join(f"{c} ({counts[i]})" for i, c in enumerate(bundle.classes)))
    try:
        scen = build_scenario(bundle, cfg)
    except DataError as exc:  # the data set is fine; only the default scenario does not fit it
        print(f"\nscenario: {exc}")
        return 0
    how = "clients as the data defines them" if bundle.clients is not None else f"partition={cfg['partition']}"
    print(f"\nscenario ({how}, seed={cfg['seed']}): {len(scen.clients)} clients")
    print(f"{'client':>6} {'group':<11} {'domain':<9} {'train':>6} {'val':>5} {'test':>5}  name")
    for c in scen.clients:
        dom = scen.domains[c.domain] if "image" in c.modalities else "-"
        print(f"{c.cid:>6} {c.group:<11} {dom:<9} {len(c.splits['train']):>6} {len(c.splits['val']):>5} "
              f"{len(c.splits['test']):>5}  {c.name}".rstrip())
    print("server test: " + ", ".join(f"{k} {len(v)} rows" for k, v in scen.test.items()))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    print(cfg.to_toml(), end="")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from adamodal.methods import get_method_class, method_names

    for name in method_names():
        print(f"{name:<14} {get_method_class(name).description}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from adamodal.config import read_scenario, scenario_names

    for name in scenario_names():
        print(f"{name:<16} {read_scenario(name)[0]}")
    print("\nrun one with --set scenario=NAME (explicit keys win); see its keys with "
          "`adamodal config --set scenario=NAME`")
    return 0


JOBS_HELP = ("runs in parallel worker processes (0 = one per core, 1 = one after another; same results); "
             "in parallel, each run keeps to workers=1 and the longest methods start first")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamodal", description="Federated learning when clients are missing a modality.")
    p.add_argument("--version", action="version", version=f"adamodal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one experiment")
    _config_args(r)
    r.add_argument("--out", type=Path, help="run folder (default runs/<dataset>-<method>-s<seed>)")
    r.add_argument("--resume", metavar="DIR", help="continue a killed run from its last checkpoint")
    r.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="compare methods on the same clients, splits and seeds")
    _config_args(b)
    b.add_argument("--methods", default="local,fedavg,fedavg_group,fedprox,adamodal,central")
    b.add_argument("--seeds", default="0,1,2")
    b.add_argument("--out", type=Path, default=Path("runs/bench"))
    b.add_argument("--jobs", type=int, default=0, help=JOBS_HELP)
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="local vs fedavg vs adamodal vs central on the default scenario, table and plots")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--jobs", type=int, default=0, help=JOBS_HELP)
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser(
        "data", help="fetch a data set into the cache, describe it, or check a data set or folder",
        description="fetch NAME: download into the cache. info NAME: describe the data set and its "
        "default scenario. check PATH|NAME: validate a data folder (client_XX/ folders, "
        "MIMIC-CXR-JPG, IU X-ray) or a data set before training; exit 0 with a summary, or "
        "exit 1 with one 'path: reason' line per problem.")
    data.add_argument("action", choices=("fetch", "info", "check"))
    data.add_argument("name", metavar="NAME|PATH")
    _config_args(data)
    data.set_defaults(func=cmd_data)

    c = sub.add_parser("config", help="print the resolved configuration (all keys, defaults applied)")
    _config_args(c)
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("methods", help="list the methods")
    m.set_defaults(func=cmd_methods)

    s = sub.add_parser("scenarios", help="list the named scenarios (config key `scenario`)")
    s.set_defaults(func=cmd_scenarios)

    from adamodal.flower.cli import add_flower_parser

    add_flower_parser(sub, _config_args, _resolve)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AdamodalError as exc:
        if os.environ.get("ADAMODAL_DEBUG"):
            raise
        print(f"adamodal: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`adamodal methods | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("adamodal: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``adamodal`` command: :func:`main`, then an exit that skips the interpreter's
    teardown. Freeing torch, the data sets' arrays and every module took about a second
    after each command (measured on a 1-round run), time a user waits for and nothing is
    left to do in: every file is written and closed, worker processes have ended, and the
    exit handlers (multiprocessing's, logging's) run first. Tests call :func:`main`, which
    returns normally."""
    import atexit

    code = 1  # an exception escaping main() leaves this, as a normal interpreter exit would

    def finish() -> None:  # registered first, so it runs after every other exit handler
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)

    atexit.register(finish)
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        raise
    sys.exit(code)


if __name__ == "__main__":
    entry()
