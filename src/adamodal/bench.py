"""Several runs on the same clients, splits and seeds, compared in one table and one plot."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def run_bench(methods: list[str], seeds: list[int], base: dict[str, Any], out: Path, *, quiet: bool,
              title: str, jobs: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Every method x seed on the same scenario; a markdown table and a bar plot in ``out``."""
    return run_variants({m: {"method": m} for m in methods}, seeds, base, out, quiet=quiet, title=title, jobs=jobs)


def default_jobs() -> int:
    """The cores this process may use: one run per core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _one_run(values: dict[str, Any], run_dir: str, progress: bool) -> dict[str, Any]:
    """One run and its history plot (in a worker process when runs go in parallel)."""
    from adamodal.config import resolve
    from adamodal.report import plot_history
    from adamodal.runtime.simulator import run_experiment

    summary = run_experiment(resolve({}, values), Path(run_dir), progress=progress, force=True)
    plot_history(summary, Path(run_dir) / "history.png")
    return summary


def run_variants(variants: dict[str, dict[str, Any]], seeds: list[int], base: dict[str, Any], out: Path, *,
                 quiet: bool, title: str, jobs: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Every variant (a label and its config overrides: a method, an ablation flag, a K) x seed
    on the same scenario; tables in ``out/results.md``, bars in ``out/comparison.png``.

    The runs are independent, so up to ``jobs`` of them (0: one per core) go in parallel
    worker processes; each run's result depends only on its config and seed, so it is the
    same as one run after another (each run trains with ``threads`` torch threads, 1 by
    default, so parallel runs do not contend for the cores they share).
    """
    todo: list[tuple[str, int, dict[str, Any], Path]] = []
    for label, overrides in variants.items():
        for seed in seeds:
            values = {**base, **overrides, "seed": seed}
            todo.append((label, seed, values, out / label.replace(" ", "_").replace("=", "-") / f"seed{seed}"))
    jobs = min(len(todo), jobs if jobs > 0 else default_jobs())
    # the workers start (and import torch) while this process checks every variant
    pool = _start_pool(jobs) if jobs > 1 else None
    try:
        from adamodal.config import resolve

        for _, _, values, _ in todo:
            resolve({}, values)  # a bad variant fails here, before any run has started
        done: dict[tuple[str, int], dict[str, Any]] = {}
        if pool is None:
            for label, seed, values, run_dir in todo:
                if not quiet:
                    print(f"== {label} seed {seed}", file=sys.stderr)
                done[(label, seed)] = _one_run(values, str(run_dir), not quiet)
        else:  # the runs already fill the cores: a run's own worker pool would only contend
            _run_parallel(pool, [(lb, sd, {"workers": 1, **v}, d) for lb, sd, v, d in todo], jobs, done, quiet=quiet)
    finally:
        if pool is not None:  # the workers exit while the tables and plots are made
            pool.shutdown(wait=False, cancel_futures=True)
    from adamodal.report import (
        CAPTION,
        comparison_rows,
        markdown_table,
        plot_comparison,
        print_table,
    )

    runs: dict[str, list[dict[str, Any]]] = {}
    for label, seed, _, _ in todo:
        runs.setdefault(label, []).append(done[(label, seed)])
    cfg0 = resolve({}, dict(base))
    named = f"scenario {cfg0['scenario']}, " if cfg0["scenario"] else ""
    scenario = (f"{named}{cfg0['dataset']}: {cfg0['clients.multimodal']} image+text / {cfg0['clients.image_only']} image-only / "
                f"{cfg0['clients.text_only']} text-only clients, partition={cfg0['partition']}"
                f"{' alpha=' + str(cfg0['partition.alpha']) if cfg0['partition'] in ('dirichlet', 'aligned') else ''}, "
                f"{cfg0['rounds']} rounds, seeds {', '.join(map(str, seeds))}")
    own = comparison_rows(runs, key="groups")
    server = comparison_rows(runs, key="groups_server_test")
    md = (f"# {title}\n\n{scenario}\n\n{CAPTION}.\n\n"
          "## Each client on its own test split (pooled per group)\n\n" + markdown_table(*own) +
          "\n## Each client's model on the server test set, seen with its modalities and image domain\n\n"
          + markdown_table(*server))
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    plot_comparison(runs, out / "comparison.png")
    plot_comparison(runs, out / "comparison_server_test.png", key="groups_server_test")
    print(f"{title} — {scenario}")
    print_table(*own, title="each client on its own test split", caption=CAPTION)
    print_table(*server, title="each client's model on the server test set (its modalities, its vendor)")
    print(f"wrote {out}/results.md, results.json, comparison.png, comparison_server_test.png")
    return runs


def _warm() -> None:
    """A worker's first task: the imports every run needs, done before the runs arrive."""
    import torch._dynamo  # noqa: F401

    import adamodal.runtime.simulator  # noqa: F401


def _start_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes (spawned: a forked copy of a process that has used torch's
    thread pool can hang), each started on its imports at once."""
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(jobs):
        pool.submit(_warm)
    return pool


def _run_parallel(pool: ProcessPoolExecutor, todo: list[tuple[str, int, dict[str, Any], Path]], jobs: int,
                  done: dict[tuple[str, int], dict[str, Any]], *, quiet: bool) -> None:
    """The runs on ``pool``; a failed run stops the rest and raises its error."""
    from concurrent.futures import as_completed

    t0 = time.perf_counter()
    from adamodal.config import resolve
    from adamodal.methods import get_method_class

    def cost(values: dict[str, Any]) -> float:
        return get_method_class(str(resolve({}, values)["method"])).relative_cost

    # longest first: a long run started last would keep one core busy after the rest are done
    order = sorted(todo, key=lambda t: -cost(t[2]))
    futures = {pool.submit(_one_run, values, str(run_dir), False): (label, seed)
               for label, seed, values, run_dir in order}
    if not quiet:
        print(f"== {len(todo)} runs, {jobs} at a time", file=sys.stderr)
    for fut in as_completed(futures):
        label, seed = futures[fut]
        if fut.exception() is not None:
            for other in futures:
                other.cancel()  # those not started yet; running ones finish
            raise fut.exception()  # type: ignore[misc]
        done[(label, seed)] = fut.result()
        if not quiet:
            print(f"== {label} seed {seed} done ({done[(label, seed)]['wall_s']:.1f} s in its loop, "
                  f"{time.perf_counter() - t0:.1f} s since the start)", file=sys.stderr)
