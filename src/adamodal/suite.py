"""The missing-modality suite: every named scenario x seed x method, against the pooled ceiling.

A comparison means something only where the setting leaves room (DESIGN section 6), so for
each scenario and client group the suite reports the pooled ceiling (:mod:`adamodal.ceiling`),
each method's ``groups_server_test`` macro-AUC, FedAvg's headroom (ceiling - FedAvg) and the
fraction of it each other method closes, (method - FedAvg) / (ceiling - FedAvg), shown only
where the headroom is at least :data:`MIN_HEADROOM` (below that the ratio is noise over
noise). Means are taken over seeds first, then the ratio is formed.

Every (scenario, method, seed) result and every (scenario, seed) ceiling is cached as one small
JSON file under ``out/results/<scenario>/`` together with a digest of the config it came from:
an interrupted suite resumes (a run killed mid-way continues from its checkpoint in
``out/runs/``), adding a method runs only that method, and changing a key (``--rounds``,
``--set``) reruns what it touches instead of reusing a stale number. The digest covers the
config, not the code: after changing a method, ``rerun`` names it so that its cached records
and run folders are replaced rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adamodal.config import Config, load_toml, resolve
from adamodal.data.scenario import GROUPS
from adamodal.errors import AdamodalError, ConfigError

#: the reference every other method is measured against
REFERENCE = "fedavg"
#: headroom (ceiling - FedAvg macro-AUC) below which "fraction closed" is not shown
MIN_HEADROOM = 0.01
GROUP_LABEL = {"multimodal": "image+text", "image_only": "image-only", "text_only": "text-only"}
#: named variants of a method, run by the suite like a method: the strong cheap baseline of the
#: missing-modality literature is FedAvg with modality dropout on the image+text clients
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedavg_dropout": ("fedavg", {"fedavg.modality_dropout": 0.9}),
}
#: keys that cannot change a pooled ceiling (it trains no federated model)
_NOT_CEILING_KEYS = ("method", "rounds")


def suite_config(scenario: str, method: str, seed: int, overrides: Mapping[str, Any] | None = None,
                 rounds: int | None = None) -> Config:
    """The scenario's keys <- ``overrides`` (``--set``) <- the suite's own method, seed, rounds.
    ``method`` is a method's name or one of :data:`VARIANTS`."""
    base, extra = VARIANTS.get(method, (method, {}))
    values: dict[str, Any] = {**(overrides or {}), **extra, "scenario": scenario, "method": base, "seed": seed}
    if rounds is not None:
        values["rounds"] = rounds
    return resolve({}, values)


#: keys that choose where a run computes, never what it computes (``workers``: the same results)
PLACEMENT_KEYS = ("workers",)


def digest(cfg: Mapping[str, Any], drop: Sequence[str] = ()) -> str:
    """A short hash of a config (minus ``drop`` and :data:`PLACEMENT_KEYS`): a cached result
    is reused only for it."""
    drop = (*drop, *PLACEMENT_KEYS)
    text = json.dumps({k: v for k, v in sorted(cfg.items()) if k not in drop}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def other_methods_keys(method: str) -> list[str]:
    """The config keys of the other methods, which cannot change this method's result: a
    cached result stays valid when only they change (a method's keys include those of the
    classes it derives from, e.g. ``fedavg.modality_dropout`` for ``prototype``)."""
    from adamodal.methods import get_method_class, method_names

    def declared(name: str) -> set[str]:
        return {k for cls in get_method_class(name).__mro__ for k in vars(cls).get("config_defaults", {})}

    own = declared(method)
    return sorted({k for name in method_names() for k in declared(name)} - own)


def _cached(path: Path, want: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a half-written file from a killed suite: compute it again
    return record if record.get("digest") == want else None


def _write(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return record


def _same_config(path: Path, cfg: Config) -> bool:
    """Whether a run folder was made with this config. A folder from a version whose keys no
    longer exist, or that lacked a key this version has (its run never saw the new key's
    default, which resolving the old file would fill in), or a damaged file, is not the same
    run, and is run again."""
    try:
        raw = load_toml(path)
        saved = resolve(raw)
        return (set(raw) == set(cfg) and set(saved) == set(cfg)
                and all(saved.get(k) == v for k, v in cfg.items() if k not in PLACEMENT_KEYS))
    except AdamodalError:
        return False


def run_method(cfg: Config, out: Path, *, quiet: bool = True, label: str | None = None,
               rerun: bool = False) -> dict[str, Any]:
    """One (scenario, method, seed): from the cache, else resumed or run with the in-process
    simulator; what the tables need, as a JSON record. ``label`` names a variant; ``rerun``
    runs it afresh whatever is cached (the code changed, the config did not)."""
    from adamodal.runtime.simulator import CHECKPOINT, run_experiment

    scenario, method, seed = cfg["scenario"], label or cfg["method"], int(cfg["seed"])
    path = out / "results" / scenario / f"{method}-seed{seed}.json"
    want = digest(cfg, other_methods_keys(str(cfg["method"])))
    if not rerun and (hit := _cached(path, want)) is not None:
        return hit
    run_dir = out / "runs" / scenario / method / f"seed{seed}"
    same = not rerun and (run_dir / "config.toml").exists() and _same_config(run_dir / "config.toml", cfg)
    if same and (run_dir / "summary.json").exists():  # finished, but killed before its record
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        resume = same and (run_dir / CHECKPOINT).exists()
        if not quiet:
            print(f"== {scenario} {method} seed {seed}{' (resumed)' if resume else ''}", file=sys.stderr)
        summary = run_experiment(cfg, run_dir, progress=not quiet, resume=resume, force=True)
    return _write(path, {
        "scenario": scenario, "method": method, "seed": seed, "digest": want, "rounds": summary["rounds"],
        "groups": {g: m["macro_auc"] for g, m in summary["groups_server_test"].items()},
        "bytes_up_per_round": summary["bytes_up_per_round"], "wall_s": summary["wall_s"],
        "clients": summary["clients"],
    })


def run_ceiling(cfg: Config, out: Path, *, quiet: bool = True) -> dict[str, Any]:
    """The pooled ceiling of every client group of one (scenario, seed), cached likewise."""
    from adamodal.ceiling import VERSION, ceilings
    from adamodal.runtime.simulator import prepare

    scenario, seed = cfg["scenario"], int(cfg["seed"])
    path = out / "results" / scenario / f"ceiling-seed{seed}.json"
    want = digest({**cfg, "ceiling.version": VERSION}, _NOT_CEILING_KEYS)
    if (hit := _cached(path, want)) is not None:
        return hit
    if not quiet:
        print(f"== {scenario} pooled ceiling seed {seed}", file=sys.stderr)
    from threadpoolctl import threadpool_limits

    exp = prepare(cfg, progress=not quiet)
    threads = int(cfg["threads"]) or None
    with threadpool_limits(limits=threads):  # scikit-learn's BLAS, as the config's torch threads
        groups = ceilings(exp, seed)
    return _write(path, {"scenario": scenario, "method": "ceiling", "seed": seed, "digest": want, "groups": groups})


def run_suite(scenarios: Sequence[str], seeds: Sequence[int], methods: Sequence[str], out: Path, *,
              overrides: Mapping[str, Any] | None = None, rounds: int | None = None,
              quiet: bool = True, rerun: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every scenario x seed: the ceiling, then every method (FedAvg always, first). Every
    config is resolved before anything runs, so a typo fails in a second, not an hour in.
    The methods in ``rerun`` run afresh instead of coming from the cache."""
    methods = [REFERENCE] + [m for m in methods if m != REFERENCE]
    if unknown := sorted(set(rerun) - set(methods)):
        raise ConfigError(f"--rerun {','.join(unknown)}: not among the suite's methods ({', '.join(methods)})")
    configs = {(s, m, seed): suite_config(s, m, seed, overrides, rounds)
               for s in scenarios for m in methods for seed in seeds}
    records = []
    for s in scenarios:
        for seed in seeds:
            records.append(run_ceiling(configs[(s, REFERENCE, seed)], out, quiet=quiet))
            records.extend(run_method(configs[(s, m, seed)], out, quiet=quiet, label=m, rerun=m in rerun)
                           for m in methods)
    return records


def cached_records(out: Path, scenarios: Sequence[str], seeds: Sequence[int],
                   methods: Sequence[str]) -> list[dict[str, Any]]:
    """The records already under ``out`` for these scenarios, seeds and methods (and the
    ceilings), as they were computed: nothing is run and no config is compared, so tables can
    be rebuilt from a suite whose code has since changed in ways that do not touch its numbers
    (say so where you publish them)."""
    methods = [REFERENCE] + [m for m in methods if m != REFERENCE]
    records = []
    for s in scenarios:
        for seed in seeds:
            for name in ("ceiling", *methods):
                path = out / "results" / s / f"{name}-seed{seed}.json"
                if path.exists():
                    try:
                        records.append(json.loads(path.read_text()))
                    except (OSError, json.JSONDecodeError):
                        continue
    return records


# ---- tables and the heatmap ----------------------------------------------------------------

def _mean_std(vals: Sequence[float]) -> str:
    if not vals:
        return "–"
    return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else "")


def collect(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Records -> ``{"rows": [(scenario, group)], "auc": {(scenario, group, method): [per seed]},
    "cost": {(scenario, method): {"bytes": [...], "wall": [...]}}, "methods": [...]}``.
    The ceiling is the method ``"ceiling"``; FedAvg first among the methods."""
    auc: dict[tuple[str, str, str], list[float]] = {}
    cost: dict[tuple[str, str], dict[str, list[float]]] = {}
    scenarios: list[str] = []
    methods: list[str] = []
    for r in records:
        scen, method = r["scenario"], r["method"]
        if scen not in scenarios:
            scenarios.append(scen)
        if method != "ceiling":
            if method not in methods:
                methods.append(method)
            c = cost.setdefault((scen, method), {"bytes": [], "wall": []})
            c["bytes"].append(float(r["bytes_up_per_round"]))
            c["wall"].append(float(r["wall_s"]))
        for group, value in r["groups"].items():
            score = value["macro_auc"] if isinstance(value, Mapping) else value
            if score is not None:
                auc.setdefault((scen, group, method), []).append(float(score))
    methods.sort(key=lambda m: m != REFERENCE)
    rows = [(s, g) for s in scenarios for g in GROUPS if any((s, g, m) in auc for m in methods)]
    return {"rows": rows, "auc": auc, "cost": cost, "methods": methods}


def headroom(data: Mapping[str, Any], scenario: str, group: str) -> float | None:
    """Mean ceiling - mean FedAvg macro-AUC, or None when either is missing."""
    ceil, ref = data["auc"].get((scenario, group, "ceiling")), data["auc"].get((scenario, group, REFERENCE))
    return float(np.mean(ceil) - np.mean(ref)) if ceil and ref else None


def closed(data: Mapping[str, Any], scenario: str, group: str, method: str) -> float | None:
    """(method - FedAvg) / (ceiling - FedAvg), over seed means; None where the headroom is
    under :data:`MIN_HEADROOM` or a number is missing."""
    room = headroom(data, scenario, group)
    vals, ref = data["auc"].get((scenario, group, method)), data["auc"].get((scenario, group, REFERENCE))
    if room is None or room < MIN_HEADROOM or not vals or not ref:
        return None
    return float((np.mean(vals) - np.mean(ref)) / room)


def _ratio(data: Mapping[str, Any], scenario: str, method: str, what: str) -> str:
    mine, ref = data["cost"].get((scenario, method)), data["cost"].get((scenario, REFERENCE))
    if not mine or not ref or np.mean(ref[what]) <= 0:
        return "–"
    return f"{np.mean(mine[what]) / np.mean(ref[what]):.2f}"


def suite_tables(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: macro-AUC per scenario x group x method with the ceiling, the headroom and
    the fraction closed; then upload bytes per round and wall time relative to FedAvg."""
    data = collect(records)
    methods, others = data["methods"], [m for m in data["methods"] if m != REFERENCE]
    header = ["scenario", "group", "ceiling", *methods, "headroom", *[f"closed: {m}" for m in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scen, group in data["rows"]:
        room = headroom(data, scen, group)
        cells = [scen, GROUP_LABEL.get(group, group), _mean_std(data["auc"].get((scen, group, "ceiling"), []))]
        cells += [_mean_std(data["auc"].get((scen, group, m), [])) for m in methods]
        cells.append("–" if room is None else f"{room:+.3f}")
        for m in others:
            frac = closed(data, scen, group, m)
            cells.append("–" if frac is None else f"{frac:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    scenarios = list(dict.fromkeys(s for s, _ in data["rows"]))
    cost = ["| scenario | " + " | ".join(f"{m} upload ×, wall ×" for m in methods) + " |",
            "|" + "---|" * (len(methods) + 1)]
    for scen in scenarios:
        cost.append(f"| {scen} | " + " | ".join(
            f"{_ratio(data, scen, m, 'bytes')}, {_ratio(data, scen, m, 'wall')}" for m in methods) + " |")
    return ("\n".join(lines) + "\n\nceiling: the better of a pooled logistic regression and MLP on the "
            "group's modalities, scored on the same server-test views; headroom = ceiling - "
            f"{REFERENCE}; closed = (method - {REFERENCE}) / headroom, shown where headroom >= "
            f"{MIN_HEADROOM}; mean ± std over seeds.\n\nUpload bytes per round and wall time, "
            f"relative to {REFERENCE}:\n\n" + "\n".join(cost) + "\n")


def plot_headroom(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Heatmap, one row per scenario and group: FedAvg's headroom, then each other method's
    fraction of it closed (grey where the headroom is under :data:`MIN_HEADROOM`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = collect(records)
    rows, others = data["rows"], [m for m in data["methods"] if m != REFERENCE]
    labels = [f"{s} / {GROUP_LABEL.get(g, g)}" for s, g in rows]
    room = np.array([[np.nan if (h := headroom(data, s, g)) is None else h] for s, g in rows]).reshape(len(rows), 1)
    frac = np.array([[np.nan if (f := closed(data, s, g, m)) is None else f for m in others] for s, g in rows])
    widths = [1] + ([max(len(others), 1) * 1.2] if others else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(max(6.0, 3 + 1.3 * sum(widths)), 0.45 * len(rows) + 1.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    panels = [(axes[0][0], room, [f"{REFERENCE}\nheadroom"], "Blues", (0, max(0.05, np.nanmax(room, initial=0))))]
    if others:
        panels.append((axes[0][1], frac.reshape(len(rows), len(others)), others, "RdYlGn", (-1, 1)))
    for k, (ax, values, cols, cmap, (lo, hi)) in enumerate(panels):
        cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), labels if k == 0 else [""] * len(rows), fontsize=8)
        for (i, j), v in np.ndenumerate(values):
            text = "–" if np.isnan(v) else (f"{v:+.3f}" if k == 0 else f"{v:.0%}")
            r, g, b, _ = cm(np.clip((v - lo) / (hi - lo), 0, 1)) if not np.isnan(v) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on a dark cell
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    if others:
        axes[0][1].set_title("fraction of the headroom closed", fontsize=9)
    fig.suptitle("macro-AUC headroom over FedAvg, per scenario and client group", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
