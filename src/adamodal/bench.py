"""Several runs on the same clients, splits and seeds, compared in one table and one plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def run_bench(methods: list[str], seeds: list[int], base: dict[str, Any], out: Path, *, quiet: bool,
              title: str) -> dict[str, list[dict[str, Any]]]:
    """Every method x seed on the same scenario; a markdown table and a bar plot in ``out``."""
    return run_variants({m: {"method": m} for m in methods}, seeds, base, out, quiet=quiet, title=title)


def run_variants(variants: dict[str, dict[str, Any]], seeds: list[int], base: dict[str, Any], out: Path, *,
                 quiet: bool, title: str) -> dict[str, list[dict[str, Any]]]:
    """Every variant (a label and its config overrides: a method, an ablation flag, a K) x seed
    on the same scenario; tables in ``out/results.md``, bars in ``out/comparison.png``."""
    from adamodal.config import resolve
    from adamodal.report import (
        CAPTION,
        comparison_rows,
        markdown_table,
        plot_comparison,
        plot_history,
        print_table,
    )
    from adamodal.runtime.simulator import run_experiment

    runs: dict[str, list[dict[str, Any]]] = {}
    for label, overrides in variants.items():
        for seed in seeds:
            cfg = resolve({}, {**base, **overrides, "seed": seed})
            run_dir = out / label.replace(" ", "_").replace("=", "-") / f"seed{seed}"
            if not quiet:
                print(f"== {label} seed {seed}", file=sys.stderr)
            summary = run_experiment(cfg, run_dir, progress=not quiet, force=True)
            plot_history(summary, run_dir / "history.png")
            runs.setdefault(label, []).append(summary)
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
