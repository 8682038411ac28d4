"""A scenario: which items each client holds, in which split, with which modalities.

Built from a :class:`Bundle` and the config, deterministically from the seed:
1. a global test set (the data set's own test split, or a held-out fraction of identity groups);
2. the remaining groups partitioned among clients (IID, Dirichlet or k classes per client);
3. modality groups by count (multimodal, then image-only, then text-only clients), image
   domains assigned round-robin (client ``i`` sees domain ``i % D``); with ``domains.holdout``
   one image domain is kept away from every client and the server's image test views show
   only that domain (leave-one-domain-out);
4. per-client train/val/test split by group, and sample-level missingness inside multimodal
   clients (a sample never loses both modalities).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adamodal.data.base import Bundle
from adamodal.data.partition import partition_groups
from adamodal.errors import ConfigError, DataError

GROUPS = ("multimodal", "image_only", "text_only")
SPLITS = ("train", "val", "test")


@dataclass
class View:
    """Rows of a bundle as one client (or the server's test set) sees them.

    ``idx`` are item indices, ``dom`` the image domain of each row, and ``has_img`` /
    ``has_txt`` say which modalities each row really has.
    """

    idx: np.ndarray
    dom: np.ndarray
    has_img: np.ndarray
    has_txt: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)


@dataclass
class ClientSpec:
    cid: int
    group: str
    domain: int
    splits: dict[str, View] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return {"multimodal": ("image", "text"), "image_only": ("image",), "text_only": ("text",)}[self.group]

    @property
    def num_train(self) -> int:
        return len(self.splits["train"])


@dataclass
class Scenario:
    clients: list[ClientSpec]
    #: global test set under three conditions: "both", "image", "text" (only those possible)
    test: dict[str, View]
    domains: list[str]
    #: the image domain no client trains on (leave-one-domain-out), or None
    holdout: int | None = None

    def test_view_for(self, client: ClientSpec, max_rows: int | None = None, seed: int = 0) -> View:
        """The server's test set through one client's eyes: its modalities and image domain,
        at most ``max_rows`` rows (a fixed random subset) so per-client evaluation stays cheap.
        With a held-out domain every image client is scored on that unseen domain."""
        cond = {"multimodal": "both", "image_only": "image", "text_only": "text"}[client.group]
        view = self.test[cond]
        keep = np.ones(len(view), bool)
        if "image" in client.modalities:
            keep = view.dom == (client.domain if self.holdout is None else self.holdout)
        rows = np.flatnonzero(keep)
        if max_rows is not None and len(rows) > max_rows:
            rows = np.sort(np.random.default_rng([seed, 13]).choice(rows, size=max_rows, replace=False))
        return View(view.idx[rows], view.dom[rows], view.has_img[rows], view.has_txt[rows])

    def counts(self) -> dict[str, int]:
        return {g: sum(c.group == g for c in self.clients) for g in GROUPS}


def _group_labels(bundle: Bundle, groups: np.ndarray) -> np.ndarray:
    """Class of each identity group (the class of its first item)."""
    cls = bundle.class_ids()
    first: dict[int, int] = {}
    for i, g in enumerate(bundle.groups):
        first.setdefault(int(g), int(cls[i]))
    return np.array([first[int(g)] for g in groups], dtype=np.int64)


def _items_of(bundle_groups: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(bundle_groups, chosen))


def _split_groups(groups: np.ndarray, val: float, test: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Split a client's groups into train/val/test; training always keeps at least one group."""
    g = rng.permutation(groups)
    n = len(g)
    n_test = int(round(test * n))
    n_val = int(round(val * n))
    while n - n_test - n_val < 1 and (n_val or n_test):
        if n_val:
            n_val -= 1
        else:
            n_test -= 1
    return {"test": g[:n_test], "val": g[n_test:n_test + n_val], "train": g[n_test + n_val:]}


def holdout_domain(bundle: Bundle, value: object) -> int | None:
    """``domains.holdout`` as a domain index: empty means none; a name or an index otherwise."""
    text = str(value or "").strip()
    if not text:
        return None
    if "image" not in bundle.modalities or len(bundle.domains) < 2:
        raise ConfigError(
            f"domains.holdout={text}: dataset {bundle.name} has {len(bundle.domains) if 'image' in bundle.modalities else 0} "
            "image domain(s); holding one out needs at least two"
        )
    if text in bundle.domains:
        return bundle.domains.index(text)
    if text.isdigit() and int(text) < len(bundle.domains):
        return int(text)
    raise ConfigError(
        f"domains.holdout={text!r} is not an image domain of {bundle.name}: "
        f"use one of {', '.join(bundle.domains)} or an index 0-{len(bundle.domains) - 1}"
    )


def build_scenario(bundle: Bundle, cfg: dict) -> Scenario:
    """Deterministic for a given bundle and config (everything is drawn from ``cfg['seed']``)."""
    seed = int(cfg["seed"])
    rng = np.random.default_rng([seed, 7])
    counts = {g: int(cfg[f"clients.{g}"]) for g in GROUPS}
    mods = bundle.modalities
    needs = {"multimodal": ("image", "text"), "image_only": ("image",), "text_only": ("text",)}
    for g, n in counts.items():
        missing = [m for m in needs[g] if m not in mods]
        if n and missing:
            hint = " ".join(f"clients.{k}=0" for k in GROUPS if any(m not in mods for m in needs[k]))
            raise DataError(
                f"dataset {bundle.name} has no {'/'.join(missing)} modality but clients.{g}={n}; "
                f"set {hint}"
            )
    num_clients = sum(counts.values())
    holdout = holdout_domain(bundle, cfg.get("domains.holdout", ""))

    # 1. global test set
    all_groups = np.unique(bundle.groups)
    if bundle.fixed_test is not None:
        test_items = np.flatnonzero(bundle.fixed_test)
        pool_groups = np.unique(bundle.groups[~bundle.fixed_test])
    else:
        n_test = int(round(float(cfg["split.global_test"]) * len(all_groups)))
        perm = rng.permutation(all_groups)
        test_groups, pool_groups = perm[:n_test], np.sort(perm[n_test:])
        test_items = _items_of(bundle.groups, test_groups)
    limit = int(cfg.get("data.max_items", 0) or 0)
    if limit:
        # quick experiments and tests: a seeded random subset of the clients' pool (whole groups)
        pool_groups = rng.permutation(pool_groups)
        sizes = np.bincount(np.searchsorted(all_groups, bundle.groups), minlength=len(all_groups))
        take = np.cumsum(sizes[np.searchsorted(all_groups, pool_groups)]) <= limit
        pool_groups = np.sort(pool_groups[take])
        if len(test_items) > limit:
            test_items = np.sort(rng.choice(test_items, size=limit, replace=False))
    if len(pool_groups) == 0:
        raise DataError(f"dataset {bundle.name}: no items left for the clients after the global test split")

    # 2. partition groups among clients
    parts = partition_groups(
        _group_labels(bundle, pool_groups), num_clients, str(cfg["partition"]),
        alpha=float(cfg["partition.alpha"]), classes_per_client=int(cfg["partition.classes"]), seed=seed,
    )
    group_names = [g for g in GROUPS for _ in range(counts[g])]
    n_dom = len(bundle.domains)
    # leave-one-domain-out: clients cycle through the other domains only
    train_domains = [d for d in range(n_dom) if d != holdout]
    p_img, p_txt = float(cfg["missing.image"]), float(cfg["missing.text"])

    clients: list[ClientSpec] = []
    for cid, (rows, group) in enumerate(zip(parts, group_names, strict=True)):
        if len(rows) == 0:
            raise DataError(
                f"client {cid} was left with no samples (partition={cfg['partition']}); "
                "use fewer clients, a larger partition.alpha or partition=iid"
            )
        crng = np.random.default_rng([seed, 11, cid])
        spec = ClientSpec(cid=cid, group=group, domain=train_domains[cid % len(train_domains)])
        split_groups = _split_groups(pool_groups[rows], float(cfg["split.val"]), float(cfg["split.test"]), crng)
        for split in SPLITS:
            items = _items_of(bundle.groups, split_groups[split])
            n = len(items)
            has_img = np.full(n, "image" in spec.modalities)
            has_txt = np.full(n, "text" in spec.modalities)
            if group == "multimodal" and (p_img > 0 or p_txt > 0):
                drop_img = crng.random(n) < p_img
                drop_txt = crng.random(n) < p_txt
                both = drop_img & drop_txt
                # never lose both: keep one of the two at random
                keep_img = crng.random(n) < 0.5
                drop_img &= ~(both & keep_img)
                drop_txt &= ~(both & ~keep_img)
                has_img &= ~drop_img
                has_txt &= ~drop_txt
            spec.splits[split] = View(items, np.full(n, spec.domain), has_img, has_txt)
        clients.append(spec)

    # 3. global test views: every (item, domain) pair for image conditions (only the held-out
    #    domain under leave-one-domain-out), each item once for text
    test: dict[str, View] = {}
    n_t = len(test_items)
    if "image" in mods:
        test_domains = np.arange(n_dom) if holdout is None else np.array([holdout])
        rep_idx = np.repeat(test_items, len(test_domains))
        rep_dom = np.tile(test_domains, n_t)
        ones, zeros = np.ones(len(rep_idx), bool), np.zeros(len(rep_idx), bool)
        if "text" in mods:
            test["both"] = View(rep_idx, rep_dom, ones, ones.copy())
        test["image"] = View(rep_idx, rep_dom, ones.copy(), zeros)
    if "text" in mods:
        test["text"] = View(test_items, np.zeros(n_t, np.int64), np.zeros(n_t, bool), np.ones(n_t, bool))
    return Scenario(clients=clients, test=test, domains=list(bundle.domains), holdout=holdout)
