"""AdaModal-Fed's configuration keys, their defaults and their checks.

How each default was chosen is in ``docs/adamodal.md``: on the clients' validation splits or
on earlier measurements named there, never on the server test view the tables report.
"""

from __future__ import annotations

from typing import Any

from adamodal.errors import ConfigError
from adamodal.methods.adamodal.imputation import IMPUTE_MODES

SHARE_MODES = ("centroids", "embeddings")
CONTRIBUTION_MODES = ("score", "size")
PRECISIONS = ("float32", "float16", "int8")
MODALITY_AVERAGES = ("holders", "all")

DEFAULTS: dict[str, Any] = {
    # stage 1: warm-up and knowledge distillation
    "adamodal.kd": True,
    "adamodal.kd_threshold": 0.5,
    "adamodal.kd_temperature": 2.0,
    "adamodal.kd_weight": 1.0,
    "adamodal.kd_epochs": 1,
    "adamodal.kd_teachers": 3,
    "adamodal.warmup_epochs": 1,
    "adamodal.round1_train": False,  # a second pass of training in round 1, on the first knowledge
    "adamodal.infonce_temperature": 0.1,
    "adamodal.infonce_weight": 0.5,
    # stage 2: summaries and clustering
    "adamodal.cluster": True,
    "adamodal.k": 64,
    "adamodal.k_local": 8,
    "adamodal.min_count": 3,
    "adamodal.match_labels": 0.0,  # weight of label-histogram disagreement in the pairing cost
    "adamodal.share": "centroids",
    "adamodal.dp_sigma": 0.0,
    "adamodal.dp_clip": 10.0,
    # stage 3: cross-attention imputation
    "adamodal.cross_attention": True,
    "adamodal.impute": "zero",
    "adamodal.impute_weight": 1.0,
    "adamodal.heads": 4,
    # stage 4: propagation and gating
    "adamodal.gate": True,
    "adamodal.tau": 1.0,
    "adamodal.beta": 0.1,
    "adamodal.replay": 0.1,  # weight of the class-prototype replay term (multiclass tasks)
    # local training and the global update
    "adamodal.modality_dropout": 0.9,
    "adamodal.contribution": "size",
    "adamodal.modality_average": "all",  # non-holders count with the weights they were sent; or "holders"
    "adamodal.tau_c": 1.0,
    "adamodal.rank": 0,
    "adamodal.adapter_rank": 0,
    "adamodal.personal_rank": 0,
    "adamodal.upload_precision": "int8",
}


def read_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``{short key: value}`` from the config, checked; one ConfigError naming the key."""
    o = {k.split(".", 1)[1]: cfg.get(k, v) for k, v in DEFAULTS.items()}
    for key, valid in (("share", SHARE_MODES), ("impute", IMPUTE_MODES), ("contribution", CONTRIBUTION_MODES),
                       ("upload_precision", PRECISIONS), ("modality_average", MODALITY_AVERAGES)):
        if o[key] not in valid:
            raise ConfigError(f"adamodal.{key}: {o[key]!r} is not one of {', '.join(valid)}")
    if not 0 < float(o["kd_threshold"]) < 1:
        raise ConfigError(f"adamodal.kd_threshold: {o['kd_threshold']} must be a quantile in (0, 1)")
    for key in ("kd_temperature", "infonce_temperature", "tau", "tau_c", "dp_clip"):
        if float(o[key]) <= 0:
            raise ConfigError(f"adamodal.{key}: {o[key]} must be > 0")
    for key in ("kd_weight", "infonce_weight", "beta", "dp_sigma", "impute_weight", "match_labels", "replay"):
        if float(o[key]) < 0:
            raise ConfigError(f"adamodal.{key}: {o[key]} must be >= 0")
    for key in ("k_local", "k", "heads", "kd_teachers", "min_count"):
        if int(o[key]) < 1:
            raise ConfigError(f"adamodal.{key}: {o[key]} must be >= 1")
    for key in ("warmup_epochs", "kd_epochs", "rank", "personal_rank", "adapter_rank"):
        if int(o[key]) < 0:
            raise ConfigError(f"adamodal.{key}: {o[key]} must be >= 0")
    if int(o["personal_rank"]) > 0 and int(o["rank"]) == 0:
        raise ConfigError("adamodal.personal_rank: a personal update lives on a factorised projection; "
                          "set adamodal.rank > 0 as well")
    if not 0 <= float(o["modality_dropout"]) < 1:
        raise ConfigError(f"adamodal.modality_dropout: {o['modality_dropout']} must be in [0, 1)")
    return o
