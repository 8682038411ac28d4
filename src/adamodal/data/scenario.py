"""A scenario: which items each client holds, in which split, with which modalities.

Built from a :class:`Bundle` and the config, deterministically from the seed:
1. a global test set (the data set's own test split, or a held-out fraction of identity groups);
2. the remaining groups partitioned among clients (IID, Dirichlet, k classes per client, or
   Dirichlet aligned with the modality groups: see :mod:`adamodal.data.partition`);
   groups that natively lack the image (a report collection added beside X-rays) go to the
   text-only clients, groups that lack the text to the image-only clients;
3. modality groups by count (multimodal, then image-only, then text-only clients), image
   domains assigned round-robin (client ``i`` sees domain ``i % D``); with ``domains.holdout``
   one image domain is kept away from every client and the server's image test views show
   only that domain (leave-one-domain-out);
4. per-client train/val/test split by group, and sample-level missingness inside multimodal
   clients (a sample never loses both modalities).

A bundle whose sites define their own clients (``Bundle.clients``, e.g. the ``folder`` layout)
skips steps 1-3: each predefined client keeps exactly its items, its modality group is what
its items have, and the global test set is the bundle's ``fixed_test`` items (a ``test``
folder) or else the union of the clients' own test splits. Items that lack a modality
(``Bundle.has_image`` / ``has_text``) never show it, in any view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adamodal.cache import cache_dir
from adamodal.data._public import check_public, hold_out_public, public_rows
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
    #: the site's own name when the data defines its clients (``client_03``), else ``""``
    name: str = ""

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
    #: the server's public paired set (``split.public``, see :mod:`adamodal.data._public`) or None
    public: View | None = None

    def test_view_for(self, client: ClientSpec, max_rows: int | None = None, seed: int = 0) -> View:
        """The server's test set through one client's eyes: its modalities and image domain,
        at most ``max_rows`` rows (a fixed random subset) so per-client evaluation stays cheap.
        With a held-out domain every image client is scored on that unseen domain."""
        cond = {"multimodal": "both", "image_only": "image", "text_only": "text"}[client.group]
        view = self.test.get(cond)
        if view is None:  # predefined test items may lack the pairing this client would see
            empty = np.zeros(0, np.int64)
            return View(empty, empty.copy(), np.zeros(0, bool), np.zeros(0, bool))
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


def _view(bundle: Bundle, items: np.ndarray, dom: int, img: bool, txt: bool) -> View:
    """Rows ``items`` seen with the given modalities, minus what an item really lacks; rows
    left with no modality at all are dropped (they carry nothing a model could read)."""
    has_img = bundle.image_mask()[items] & img
    has_txt = bundle.text_mask()[items] & txt
    keep = has_img | has_txt
    items = items[keep]
    return View(items, np.full(len(items), dom), has_img[keep], has_txt[keep])


def _drop_modalities(view: View, p_img: float, p_txt: float, rng: np.random.Generator) -> View:
    """Sample-level missingness inside a multimodal client: a row never loses both."""
    n = len(view)
    has_img, has_txt = view.has_img.copy(), view.has_txt.copy()
    drop_img = rng.random(n) < p_img
    drop_txt = rng.random(n) < p_txt
    both = drop_img & drop_txt
    keep_img = rng.random(n) < 0.5
    drop_img &= ~(both & keep_img)
    drop_txt &= ~(both & ~keep_img)
    # only drop a modality the row still has another one beside
    drop_img &= has_txt
    drop_txt &= has_img & ~drop_img
    return View(view.idx, view.dom, has_img & ~drop_img, has_txt & ~drop_txt)


def test_views(bundle: Bundle, test_items: np.ndarray, holdout: int | None = None) -> dict[str, View]:
    """Every (item, domain) pair for image conditions, each item once for text; each condition
    keeps only the items that have what it shows (and, with ``client_group``, only its kind's)."""
    test: dict[str, View] = {}
    mods = bundle.modalities
    n_dom = len(bundle.domains)
    img_ok, txt_ok = bundle.image_mask(), bundle.text_mask()
    kind_of = {"both": "multimodal", "image": "image_only", "text": "text_only"}

    def of_kind(cond: str, items: np.ndarray) -> np.ndarray:
        """With ``client_group``, a condition shows only the items of its kind of client."""
        return items if bundle.client_group is None else items[bundle.client_group[items] == kind_of[cond]]

    if "image" in mods:
        for cond, need_txt in (("both", True), ("image", False)):
            if cond == "both" and "text" not in mods:
                continue
            items = of_kind(cond, test_items[img_ok[test_items] & (txt_ok[test_items] if need_txt else True)])
            if bundle.client_group is not None and len(items) == 0:
                continue
            domains = np.arange(n_dom) if holdout is None else np.array([holdout])
            rep_idx = np.repeat(items, len(domains))
            rep_dom = np.tile(domains, len(items))
            ones = np.ones(len(rep_idx), bool)
            test[cond] = View(rep_idx, rep_dom, ones, ones.copy() if need_txt else ~ones)
    if "text" in mods:
        items = of_kind("text", test_items[txt_ok[test_items]])
        n_t = len(items)
        if bundle.client_group is not None and n_t == 0:
            return test
        test["text"] = View(items, np.zeros(n_t, np.int64), np.zeros(n_t, bool), np.ones(n_t, bool))
    return test


def check_group_integrity(bundle: Bundle) -> None:
    """One identity group (a patient) must not sit in two predefined clients, nor straddle the
    predefined test set and the clients' pool: either would leak a patient across splits."""
    if bundle.fixed_test is not None:
        test_g = set(np.unique(bundle.groups[bundle.fixed_test]).tolist())
        pool_g = set(np.unique(bundle.groups[~bundle.fixed_test]).tolist())
        both = sorted(test_g & pool_g)
        if both:
            raise DataError(
                f"dataset {bundle.name}: {len(both)} identity group(s) (patients) are in both the "
                f"predefined test set and the training pool, e.g. group {both[0]}"
            )
    if bundle.clients is not None:
        names = bundle.client_names or []
        owners: dict[int, int] = {}
        for g, c in zip(bundle.groups.tolist(), bundle.clients.tolist(), strict=True):
            if c < 0:
                continue
            prev = owners.setdefault(g, c)
            if prev != c:
                raise DataError(
                    f"dataset {bundle.name}: identity group {g} (a patient) is in two clients, "
                    f"{names[prev]} and {names[c]}"
                )


def _predefined_client(bundle: Bundle, cfg: dict, cid: int, items: np.ndarray, name: str) -> ClientSpec:
    """One predefined client holding ``items``, split by group with the client's own seed
    (``[seed, 11, cid]``): the same split whether the client is one of many folders or a site
    that loaded only its own folder."""
    if len(items) == 0:
        raise DataError(f"dataset {bundle.name}: client {name} has no samples")
    img_ok, txt_ok = bundle.image_mask(), bundle.text_mask()
    p_img, p_txt = float(cfg["missing.image"]), float(cfg["missing.text"])
    has_i, has_t = bool(img_ok[items].any()), bool(txt_ok[items].any())
    group = "multimodal" if has_i and has_t else ("image_only" if has_i else "text_only")
    spec = ClientSpec(cid=cid, group=group, domain=cid % len(bundle.domains), name=name)
    crng = np.random.default_rng([int(cfg["seed"]), 11, cid])
    split_groups = _split_groups(np.unique(bundle.groups[items]), float(cfg["split.val"]),
                                 float(cfg["split.test"]), crng)
    for split in SPLITS:
        rows = items[np.isin(bundle.groups[items], split_groups[split])]
        view = _view(bundle, rows, spec.domain, has_i, has_t)
        if group == "multimodal" and (p_img > 0 or p_txt > 0):
            view = _drop_modalities(view, p_img, p_txt, crng)
        spec.splits[split] = view
    return spec


def site_client(bundle: Bundle, cfg: dict, cid: int, name: str) -> ClientSpec:
    """Client ``cid`` when ``bundle`` is everything one site holds (a deployment's site-local
    data): all its items are the client's, split as :func:`build_scenario` would split that
    client's items."""
    return _predefined_client(bundle, cfg, cid, np.arange(len(bundle)), name)


def _predefined_scenario(bundle: Bundle, cfg: dict) -> Scenario:
    """Clients as the data defines them (one per site folder), split by group inside each."""
    assert bundle.clients is not None
    names = bundle.client_names or []
    pool = np.ones(len(bundle), bool) if bundle.fixed_test is None else ~bundle.fixed_test
    clients = [_predefined_client(bundle, cfg, cid, np.flatnonzero((bundle.clients == cid) & pool), names[cid])
               for cid in range(len(names))]
    if bundle.fixed_test is not None and bundle.fixed_test.any():
        test_items = np.flatnonzero(bundle.fixed_test)
    else:
        own = [c.splits["test"].idx for c in clients]
        test_items = np.sort(np.concatenate(own)) if own else np.zeros(0, np.int64)
    return Scenario(clients=clients, test=test_views(bundle, test_items), domains=list(bundle.domains))


def _route(bundle: Bundle, pool_groups: np.ndarray, group_names: list[str]) -> list[tuple[np.ndarray, list[int]]]:
    """Which clients share which groups: ``[(indices into pool_groups, client ids)]``.

    A bundle with ``client_group`` says it outright: each kind of client shares that kind's
    groups. Otherwise groups whose items all lack the image (e.g. an added report collection) go to the
    text-only clients, groups that all lack the text to the image-only clients, when there are
    such clients; everything else is partitioned among the remaining clients. A bundle where
    every item has every modality gives one pool holding all clients (the plain partition).
    """
    if bundle.client_group is not None:  # the data says which kind of client holds what
        kind = _group_kind(bundle, pool_groups)
        pools_by_kind = []
        for g in GROUPS:
            cids = [i for i, name in enumerate(group_names) if name == g]
            if not cids:
                continue
            mine = np.flatnonzero(kind == g)
            if len(mine) == 0:
                raise DataError(f"dataset {bundle.name} has no items for {g} clients; set clients.{g}=0")
            pools_by_kind.append((mine, cids))
        return pools_by_kind
    everyone = [(np.arange(len(pool_groups)), list(range(len(group_names))))]
    if bundle.images is None or bundle.texts is None or (bundle.has_image is None and bundle.has_text is None):
        return everyone
    in_pool = np.isin(bundle.groups, pool_groups)
    pos = np.searchsorted(pool_groups, bundle.groups[in_pool])
    n_img = np.bincount(pos, weights=bundle.image_mask()[in_pool], minlength=len(pool_groups))
    n_txt = np.bincount(pos, weights=bundle.text_mask()[in_pool], minlength=len(pool_groups))
    native = {"text_only": (n_img == 0) & (n_txt > 0), "image_only": (n_txt == 0) & (n_img > 0)}
    rest = np.ones(len(pool_groups), bool)
    pools: list[tuple[np.ndarray, list[int]]] = []
    for kind, mask in native.items():
        cids = [i for i, g in enumerate(group_names) if g == kind]
        if mask.any() and cids:
            pools.append((np.flatnonzero(mask), cids))
            rest &= ~mask
    routed = {c for _, cids in pools for c in cids}
    others = [i for i in range(len(group_names)) if i not in routed]
    if others:
        pools.insert(0, (np.flatnonzero(rest), others))
    return pools


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
    check_group_integrity(bundle)
    if bundle.clients is not None:
        check_public(bundle, float(cfg.get("split.public", 0.0)))
        return _predefined_scenario(bundle, cfg)
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
    public_groups, pool_groups = hold_out_public(bundle, pool_groups, len(all_groups),
                                                 float(cfg.get("split.public", 0.0)), seed)
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

    # 2. partition groups among clients (natively single-modality groups to matching clients)
    group_names = [g for g in GROUPS for _ in range(counts[g])]
    parts = [np.zeros(0, np.int64)] * num_clients
    for pool, cids in _route(bundle, pool_groups, group_names):
        sub = partition_groups(
            _group_labels(bundle, pool_groups[pool]), len(cids), str(cfg["partition"]),
            alpha=float(cfg["partition.alpha"]), classes_per_client=int(cfg["partition.classes"]), seed=seed,
            kinds=[group_names[c] for c in cids], leak=float(cfg["partition.leak"]), cache=cache_dir(),
        )
        for cid, rows in zip(cids, sub, strict=True):
            parts[cid] = pool[rows]
    n_dom = len(bundle.domains)
    # leave-one-domain-out: clients cycle through the other domains only
    train_domains = [d for d in range(n_dom) if d != holdout]
    p_img, p_txt = float(cfg["missing.image"]), float(cfg["missing.text"])
    pool_items = (np.ones(len(bundle), bool) if bundle.fixed_test is None else ~bundle.fixed_test)

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
            items = items[pool_items[items]]
            view = _view(bundle, items, spec.domain, "image" in spec.modalities, "text" in spec.modalities)
            if group == "multimodal" and (p_img > 0 or p_txt > 0):
                view = _drop_modalities(view, p_img, p_txt, crng)
            spec.splits[split] = view
        clients.append(spec)

    public = View(*public_rows(bundle, _items_of(bundle.groups, public_groups), train_domains)) if len(public_groups) else None
    # 3. global test views: every (item, domain) pair for image conditions (only the held-out
    #    domain under leave-one-domain-out), each item once for text
    return Scenario(clients=clients, test=test_views(bundle, test_items, holdout),
                    domains=list(bundle.domains), holdout=holdout, public=public)


def _group_kind(bundle: Bundle, groups: np.ndarray) -> np.ndarray:
    """The kind of client that may hold each identity group; its items must all agree."""
    assert bundle.client_group is not None
    kinds: dict[int, str] = {}
    for g, k in zip(bundle.groups.tolist(), bundle.client_group.tolist(), strict=True):
        if kinds.setdefault(int(g), str(k)) != str(k):
            raise DataError(f"dataset {bundle.name}: identity group {g} has items for {kinds[int(g)]} and {k} clients")
    return np.array([kinds[int(g)] for g in groups], dtype=object)
