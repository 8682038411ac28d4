"""The missing-modality suite as one command: named scenarios x seeds x methods, with headroom.

For each scenario (``adamodal scenarios``) and seed it computes, per client group, the pooled
ceiling (:mod:`adamodal.ceiling`: the better of a logistic regression and an MLP on the
group's modalities, scored exactly as ``groups_server_test``), runs each method with the
in-process simulator and reads its ``groups_server_test`` macro-AUC per group. Results are
cached under ``--out`` (``results/<scenario>/<method>-seed<k>.json``; run folders in
``runs/``), so a killed suite resumes and a new method runs alone. Writes ``results.md``
(macro-AUC, ceiling, FedAvg's headroom, fraction of it closed; upload bytes and wall time
relative to FedAvg) and ``headroom.png``.

    .venv/bin/python benchmarks/missing_modality.py [--scenarios few-multimodal,carmfl]
        [--seeds 0,1,2] [--methods fedavg,fedavg_dropout,prototype,retrieval,adamodal] [--rounds 10] [--set key=value ...]
        [--out runs/suite]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from adamodal.config import parse_assignments, scenario_names
from adamodal.errors import AdamodalError
from adamodal.suite import cached_records, plot_headroom, run_suite, suite_tables


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="", help="comma-separated names (default: all; see `adamodal scenarios`)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="fedavg,fedavg_dropout,prototype,retrieval,adamodal",
                   help="methods or named variants (fedavg_dropout: FedAvg with modality dropout 0.9); "
                        "fedavg is always run: it is the reference")
    p.add_argument("--rounds", type=int, default=None, help="default: the scenario's (the config's) rounds")
    p.add_argument("--set", dest="assignments", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run; they win over the scenarios' keys")
    p.add_argument("--out", type=Path, default=Path("runs/suite"))
    p.add_argument("--rerun", default="", metavar="METHODS",
                   help="comma-separated methods to run afresh instead of reusing their cached records "
                        "(results are cached by config, not code: name a method after changing it)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tables-only", action="store_true",
                   help="run nothing: rebuild results.md and headroom.png from the records already in --out")
    args = p.parse_args(argv)
    try:
        scenarios = _names(args.scenarios) or scenario_names()
        seeds = [int(s) for s in _names(args.seeds)]
        t0 = time.perf_counter()
        if args.tables_only:
            records = cached_records(args.out, scenarios, seeds, _names(args.methods))
        else:
            records = run_suite(scenarios, seeds, _names(args.methods), args.out,
                                overrides=parse_assignments(args.assignments), rounds=args.rounds, quiet=args.quiet,
                                rerun=_names(args.rerun))
    except AdamodalError as exc:
        print(f"missing_modality: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # --seeds not integers
        print(f"missing_modality: error: {exc}", file=sys.stderr)
        return 2
    md = suite_tables(records)
    setting = (f"seeds {', '.join(map(str, seeds))}; rounds {args.rounds or 'as each scenario sets'}"
               + (f"; --set {' '.join(args.assignments)}" if args.assignments else ""))
    (args.out / "results.md").write_text(f"# Missing-modality suite\n\n{setting}\n\n{md}")
    plot_headroom(records, args.out / "headroom.png")
    print(md)
    print(f"{len(records)} results in {time.perf_counter() - t0:.0f} s; wrote {args.out}/results.md, "
          f"{args.out}/headroom.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
