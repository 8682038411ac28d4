"""Tables and plots of runs: what a person looks at after ``adamodal run`` or ``bench``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adamodal.data.scenario import GROUPS

GROUP_LABEL = {"multimodal": "image+text", "image_only": "image-only", "text_only": "text-only"}
#: compact column labels so a comparison fits an 80-column terminal
SHORT = {"multimodal": "I+T", "image_only": "I", "text_only": "T", "macro_auc": "AUC", "macro_f1": "F1",
         "micro_f1": "µF1", "accuracy": "acc"}


def _fmt(values: Sequence[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def comparison_rows(runs: dict[str, list[dict[str, Any]]], metrics: Sequence[str] = ("macro_auc", "macro_f1"),
                    key: str = "groups") -> tuple[list[str], list[list[str]]]:
    """One row per method: per-group metrics (mean ± std over seeds), server test, bytes up per round.

    ``key`` picks the per-group numbers: ``groups`` (clients' own test splits) or
    ``groups_server_test`` (the server's test set seen with each client's modalities)."""
    groups = [g for g in GROUPS if any(g in s[key] for rs in runs.values() for s in rs)]
    header = ["method"]
    for g in groups:
        header += [f"{SHORT[g]} {SHORT[m]}" for m in metrics]
    header += ["test AUC (both)" if any("both" in s["test"] for rs in runs.values() for s in rs) else "test AUC",
               "MB up/round", "wall s"]
    rows = []
    for method, summaries in runs.items():
        row = [method]
        for g in groups:
            for m in metrics:
                row.append(_fmt([s[key].get(g, {}).get(m) for s in summaries]))
        cond = "both" if "both" in summaries[0]["test"] else next(iter(summaries[0]["test"]))
        row.append(_fmt([s["test"].get(cond, {}).get("macro_auc") for s in summaries]))
        row.append(f"{np.mean([s['bytes_up_per_round'] for s in summaries]) / 1e6:.2f}")
        row.append(f"{np.mean([s['wall_s'] for s in summaries]):.1f}")
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(header: list[str], rows: list[list[str]], title: str | None = None,
                caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console()
    # wide enough for the comparison columns even when piped (rich falls back to 80 columns)
    Console(width=max(console.width, 120)).print(table)


def run_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A single run: one row per client group, then the server's test set conditions."""
    header = ["group", "clients", "macro-AUC", "macro-F1", "micro-F1", "accuracy"]
    rows = []
    for g in GROUPS:
        if g in summary["groups"]:
            m = summary["groups"][g]
            rows.append([GROUP_LABEL[g], str(m["clients"])] + [_fmt([m[k]]) for k in ("macro_auc", "macro_f1", "micro_f1", "accuracy")])
    for cond, m in summary["test"].items():
        rows.append([f"server test ({cond})", "–", _fmt([m["macro_auc"]]), _fmt([m.get("macro_f1")]), "–", _fmt([m["accuracy"]])])
    return header, rows


def _figure(size: tuple[float, float]) -> Any:
    """A figure drawn by Agg straight into a file: no pyplot (its import and backend set-up
    were a tenth of a short run's fixed cost), no global figure registry to close."""
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def plot_history(summary: dict[str, Any], path: Path, metric: str = "macro_auc") -> Path:
    """Metric vs round, one line per client group and per server test condition."""
    fig = _figure((6.4, 4))
    ax = fig.subplots()
    hist = summary["history"]
    rounds = [h["round"] for h in hist]
    for g in GROUPS:
        vals = [h["groups"].get(g, {}).get(metric) for h in hist]
        if any(v is not None for v in vals):
            ax.plot(rounds, [np.nan if v is None else v for v in vals], marker=".", label=GROUP_LABEL[g])
    for cond in summary["test"]:
        vals = [h["test"].get(cond, {}).get(metric) for h in hist]
        ax.plot(rounds, [np.nan if v is None else v for v in vals], linestyle="--", label=f"server test ({cond})")
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("_", "-"))
    ax.set_title(f"{summary['method']} on {summary['dataset']} (seed {summary['seed']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


CAPTION = "I+T = image+text clients, I = image-only, T = text-only; mean ± std over seeds"


def plot_comparison(runs: dict[str, list[dict[str, Any]]], path: Path, metric: str = "macro_auc",
                    key: str = "groups") -> Path:
    """Grouped bars: one group of bars per client group, one bar per method (mean ± std over seeds)."""
    groups = [g for g in GROUPS if any(g in s[key] for rs in runs.values() for s in rs)]
    methods = list(runs)
    width = 0.8 / max(len(methods), 1)
    fig = _figure((7, 4))
    ax = fig.subplots()
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        means, stds = [], []
        for g in groups:
            vals = [s[key].get(g, {}).get(metric) for s in runs[method]]
            vals = [v for v in vals if v is not None]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals) if len(vals) > 1 else 0.0)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(x, [GROUP_LABEL[g] for g in groups])
    ax.set_ylabel(metric.replace("_", "-"))
    lo = np.nanmin([s[key][g][metric] for rs in runs.values() for s in rs for g in groups
                    if s[key].get(g, {}).get(metric) is not None] or [0.5])
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.legend(fontsize=8, ncol=min(len(methods), 4))
    ax.grid(axis="y", alpha=0.3)
    where = "own test splits" if key == "groups" else "server test set, as each client sees it"
    ax.set_title(f"{metric.replace('_', '-')} per client group ({where})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
