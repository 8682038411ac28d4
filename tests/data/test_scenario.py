"""Scenarios on synthetic bundles (fast) and one check on the real emoji bundle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import adamodal.data.scenario as scenario_mod
from adamodal.cache import cache_dir
from adamodal.config import resolve
from adamodal.data import get_source
from adamodal.data.base import Bundle
from adamodal.data.scenario import GROUPS, SPLITS, Scenario, View, build_scenario
from adamodal.errors import ConfigError, DataError


def make_bundle(
    n_items: int = 200,
    *,
    num_classes: int = 5,
    n_domains: int = 2,
    image: bool = True,
    text: bool = True,
    fixed_test: bool = False,
    seed: int = 0,
) -> Bundle:
    """Items in identity groups of 1-4 items; every item of a group shares its class."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_items)
    groups = np.repeat(np.arange(n_items), sizes)[:n_items].astype(np.int64)
    group_class = rng.integers(0, num_classes, groups.max() + 1)
    labels = group_class[groups].astype(np.int64)
    images = rng.integers(0, 256, (n_items, n_domains, 4, 4, 3), dtype=np.uint8) if image else None
    texts = [f"item {i} of group {g}" for i, g in enumerate(groups)] if text else None
    mask = None
    if fixed_test:  # whole groups: every third group is the predefined test set
        mask = groups % 3 == 0
    return Bundle(
        name="synthetic", task="multiclass", classes=[f"c{i}" for i in range(num_classes)],
        labels=labels, groups=groups, images=images,
        domains=[f"d{i}" for i in range(n_domains)] if image else ["default"],
        texts=texts, fixed_test=mask,
    )


def cfg_for(**overrides: object) -> dict:
    base: dict[str, object] = {
        "clients.multimodal": 4, "clients.image_only": 2, "clients.text_only": 2,
        "partition": "iid", "seed": 3,
    }
    base.update(overrides)
    return resolve(overrides=base)


def groups_of(bundle: Bundle, view: View) -> set[int]:
    return {int(g) for g in bundle.groups[view.idx]}


def client_cells(sc: Scenario) -> dict[tuple[int, str], View]:
    return {(c.cid, s): c.splits[s] for c in sc.clients for s in SPLITS}


def test_groups_never_shared_and_everything_placed() -> None:
    bundle = make_bundle()
    sc = build_scenario(bundle, cfg_for())
    cells = client_cells(sc)
    owned = {key: groups_of(bundle, v) for key, v in cells.items()}
    for (a, ga), (b, gb) in itertools.combinations(owned.items(), 2):
        assert not (ga & gb), f"group shared by {a} and {b}"
    test_groups = groups_of(bundle, sc.test["text"])
    assert test_groups, "the held-out global test set is empty"
    client_groups = set().union(*owned.values())
    assert not (test_groups & client_groups)
    # every item lands exactly once: in one client split or in the global test set
    placed = np.concatenate([v.idx for v in cells.values()] + [sc.test["text"].idx])
    assert np.array_equal(np.sort(placed), np.arange(len(bundle)))
    # a group's items all follow it (items of a group are never split)
    for v in cells.values():
        assert set(np.flatnonzero(np.isin(bundle.groups, list(groups_of(bundle, v))))) == set(
            v.idx.tolist()
        )
    # about split.global_test of the groups are held out
    n_groups = len(np.unique(bundle.groups))
    assert len(test_groups) == round(0.2 * n_groups)
    for c in sc.clients:
        assert c.num_train >= 1


def test_dirichlet_scenario_disjoint() -> None:
    bundle = make_bundle(300)
    sc = build_scenario(bundle, cfg_for(partition="dirichlet", **{"partition.alpha": 1.0}))
    owned = [groups_of(bundle, v) for v in client_cells(sc).values()]
    assert sum(len(g) for g in owned) == len(set().union(*owned))
    assert not (set().union(*owned) & groups_of(bundle, sc.test["both"]))


def test_modality_groups_and_masks() -> None:
    bundle = make_bundle()
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 3, "clients.image_only": 2,
                                           "clients.text_only": 1}))
    assert [c.group for c in sc.clients] == ["multimodal"] * 3 + ["image_only"] * 2 + ["text_only"]
    assert [c.cid for c in sc.clients] == list(range(6))
    assert sc.counts() == {"multimodal": 3, "image_only": 2, "text_only": 1}
    want = {"multimodal": (True, True), "image_only": (True, False), "text_only": (False, True)}
    mods = {"multimodal": ("image", "text"), "image_only": ("image",), "text_only": ("text",)}
    for c in sc.clients:
        assert c.modalities == mods[c.group]
        for s in SPLITS:
            v = c.splits[s]
            assert len(v.has_img) == len(v.has_txt) == len(v.dom) == len(v)
            assert v.has_img.dtype == bool and v.has_txt.dtype == bool
            img, txt = want[c.group]
            assert (v.has_img == img).all() and (v.has_txt == txt).all()


def test_zero_count_groups_are_skipped() -> None:
    sc = build_scenario(make_bundle(), cfg_for(**{"clients.multimodal": 0, "clients.image_only": 2,
                                                 "clients.text_only": 3}))
    assert [c.group for c in sc.clients] == ["image_only"] * 2 + ["text_only"] * 3


def test_domains_round_robin() -> None:
    bundle = make_bundle(n_domains=3)
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 5, "clients.image_only": 2,
                                           "clients.text_only": 0}))
    assert sc.domains == ["d0", "d1", "d2"]
    assert [c.domain for c in sc.clients] == [i % 3 for i in range(7)]
    for c in sc.clients:
        for s in SPLITS:
            assert (c.splits[s].dom == c.domain).all()


def test_sample_missingness_rates() -> None:
    p_img, p_txt = 0.3, 0.2
    bundle = make_bundle(10_000, seed=1)
    sc = build_scenario(bundle, cfg_for(**{"missing.image": p_img, "missing.text": p_txt,
                                           "clients.multimodal": 6}))
    mm = [c.splits[s] for c in sc.clients if c.group == "multimodal" for s in SPLITS]
    has_img = np.concatenate([v.has_img for v in mm])
    has_txt = np.concatenate([v.has_txt for v in mm])
    n = len(has_img)
    assert n > 4000
    assert (has_img | has_txt).all(), "a sample lost both modalities"
    # drop each with its rate; a sample drawn to lose both keeps one of the two at random
    expect_no_img = p_img - p_img * p_txt / 2
    expect_no_txt = p_txt - p_img * p_txt / 2
    for observed, p in ((1 - has_img.mean(), expect_no_img), (1 - has_txt.mean(), expect_no_txt)):
        assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / n), (observed, p)
    # single-modality clients are untouched by sample-level missingness
    for c in sc.clients:
        if c.group == "image_only":
            assert all(c.splits[s].has_img.all() and not c.splits[s].has_txt.any() for s in SPLITS)
        if c.group == "text_only":
            assert all(c.splits[s].has_txt.all() and not c.splits[s].has_img.any() for s in SPLITS)


def test_missing_text_only_still_keeps_one() -> None:
    sc = build_scenario(make_bundle(), cfg_for(**{"missing.text": 0.9, "missing.image": 0.9}))
    for c in sc.clients:
        for s in SPLITS:
            assert (c.splits[s].has_img | c.splits[s].has_txt).all()


def test_deterministic_for_a_seed() -> None:
    bundle = make_bundle()
    cfg = cfg_for(partition="dirichlet", **{"missing.image": 0.3})
    a, b = build_scenario(bundle, cfg), build_scenario(bundle, cfg)
    c = build_scenario(bundle, cfg_for(partition="dirichlet", seed=4, **{"missing.image": 0.3}))
    for x, y in zip(a.clients, b.clients, strict=True):
        for s in SPLITS:
            assert np.array_equal(x.splits[s].idx, y.splits[s].idx)
            assert np.array_equal(x.splits[s].has_img, y.splits[s].has_img)
    assert any(
        not np.array_equal(x.splits["train"].idx, y.splits["train"].idx)
        for x, y in zip(a.clients, c.clients, strict=True)
    )


def test_dataset_without_text_names_the_key() -> None:
    bundle = make_bundle(text=False)
    with pytest.raises(DataError) as info:
        build_scenario(bundle, cfg_for(**{"clients.multimodal": 0, "clients.image_only": 3,
                                          "clients.text_only": 2}))
    msg = str(info.value)
    assert "text" in msg and "clients.text_only=2" in msg
    assert "clients.text_only=0" in msg and "clients.multimodal=0" in msg
    with pytest.raises(DataError, match="clients.multimodal=0"):
        build_scenario(bundle, cfg_for())
    # the same bundle works once only image clients are asked for
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 0, "clients.image_only": 3,
                                           "clients.text_only": 0}))
    assert set(sc.test) == {"image"}


def test_dataset_without_images_names_the_key() -> None:
    bundle = make_bundle(image=False)
    with pytest.raises(DataError, match="clients.image_only=0"):
        build_scenario(bundle, cfg_for(**{"clients.multimodal": 0}))
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 0, "clients.image_only": 0}))
    assert set(sc.test) == {"text"}
    assert all(c.domain == 0 for c in sc.clients)


def test_fixed_test_respected() -> None:
    bundle = make_bundle(fixed_test=True)
    assert bundle.fixed_test is not None
    sc = build_scenario(bundle, cfg_for())
    fixed = np.flatnonzero(bundle.fixed_test)
    assert np.array_equal(np.sort(sc.test["text"].idx), fixed)
    assert np.array_equal(np.unique(sc.test["image"].idx), fixed)
    client_items = np.concatenate([v.idx for v in client_cells(sc).values()])
    assert not np.isin(client_items, fixed).any()
    assert np.array_equal(np.sort(client_items), np.flatnonzero(~bundle.fixed_test))


def test_global_test_views() -> None:
    bundle = make_bundle(n_domains=2)
    sc = build_scenario(bundle, cfg_for())
    items = np.sort(sc.test["text"].idx)
    both, image, text = sc.test["both"], sc.test["image"], sc.test["text"]
    # every (item, domain) pair once for the image conditions, each item once for text
    assert len(both) == len(image) == 2 * len(items)
    pairs = set(zip(both.idx.tolist(), both.dom.tolist(), strict=True))
    assert pairs == {(int(i), d) for i in items for d in (0, 1)}
    assert both.has_img.all() and both.has_txt.all()
    assert image.has_img.all() and not image.has_txt.any()
    assert text.has_txt.all() and not text.has_img.any()
    assert len(np.unique(text.idx)) == len(text)


def test_view_for_each_client() -> None:
    bundle = make_bundle(n_domains=2)
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 2, "clients.image_only": 2,
                                           "clients.text_only": 1}))
    items = np.sort(sc.test["text"].idx)
    for c in sc.clients:
        v = sc.test_view_for(c)
        assert np.array_equal(np.sort(v.idx), items)  # each test item once
        if c.group == "multimodal":
            assert v.has_img.all() and v.has_txt.all() and (v.dom == c.domain).all()
        elif c.group == "image_only":
            assert v.has_img.all() and not v.has_txt.any() and (v.dom == c.domain).all()
        else:
            assert v.has_txt.all() and not v.has_img.any()
    assert {int(sc.test_view_for(c).dom[0]) for c in sc.clients if c.group != "text_only"} == {0, 1}


def test_view_for_max_rows() -> None:
    bundle = make_bundle(400, n_domains=2)
    sc = build_scenario(bundle, cfg_for())
    for c in sc.clients:
        full = sc.test_view_for(c)
        small = sc.test_view_for(c, max_rows=10, seed=1)
        assert len(small) == min(10, len(full))
        assert set(small.idx.tolist()) <= set(full.idx.tolist())
        assert np.array_equal(small.idx, sc.test_view_for(c, max_rows=10, seed=1).idx)
        assert (small.dom == full.dom[0]).all() and (small.has_img == full.has_img[0]).all()
        assert len(sc.test_view_for(c, max_rows=10**6)) == len(full)


def test_impossible_classes_partition_is_a_data_error() -> None:
    # 10 clients x 1 class each over 5 classes: every class must go to 2 clients, but
    # class 4 has a single group
    bundle = make_bundle(40, num_classes=5, seed=2)
    labels = bundle.labels.copy()
    lonely = bundle.groups == bundle.groups.max()
    labels[lonely] = 4
    labels[~lonely & (labels == 4)] = 0
    bundle = Bundle(name="tiny", task="multiclass", classes=bundle.classes, labels=labels,
                    groups=bundle.groups, images=bundle.images, domains=bundle.domains,
                    texts=bundle.texts, fixed_test=None)
    with pytest.raises(DataError, match="partition=classes"):
        build_scenario(bundle, cfg_for(partition="classes", **{
            "partition.classes": 1, "clients.multimodal": 10, "clients.image_only": 0,
            "clients.text_only": 0, "split.global_test": 0.0}))


def test_more_clients_than_groups_is_a_data_error() -> None:
    bundle = make_bundle(20)
    with pytest.raises(DataError, match="clients"):
        build_scenario(bundle, cfg_for(**{"clients.multimodal": 40}))


def test_client_left_empty_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the partitioner returns, an empty client is refused with advice."""
    real = scenario_mod.partition_groups

    def leave_last_empty(*args, **kwargs):
        parts = real(*args, **kwargs)
        return [*parts[:-1], np.zeros(0, np.int64)]

    monkeypatch.setattr(scenario_mod, "partition_groups", leave_last_empty)
    with pytest.raises(DataError, match="client 7 was left with no samples"):
        build_scenario(make_bundle(), cfg_for())


# ---- the real emoji bundle -------------------------------------------------------------------

@pytest.fixture(scope="module")
def emoji() -> Bundle:
    return get_source("emoji").load(cache_dir())


def test_emoji_default_scenario(emoji: Bundle) -> None:
    cfg = resolve()
    sc = build_scenario(emoji, cfg)
    assert len(sc.clients) == 20
    assert sc.counts() == {g: cfg[f"clients.{g}"] for g in GROUPS}
    assert sc.domains == emoji.domains
    seen: dict[int, tuple[int, str]] = {}
    for c in sc.clients:
        assert c.num_train >= 1
        for s in SPLITS:
            for g in groups_of(emoji, c.splits[s]):
                assert g not in seen, f"emoji group {g} in {seen[g]} and {(c.cid, s)}"
                seen[g] = (c.cid, s)
    test_groups = groups_of(emoji, sc.test["both"])
    assert test_groups and not (test_groups & set(seen))
    assert len(seen) + len(test_groups) == len(np.unique(emoji.groups))


def _predefined_bundle(with_test: bool = False) -> Bundle:
    """12 items: sites a (paired), b (images only), c (texts only); two items per patient."""
    n = 12 + (4 if with_test else 0)
    rng = np.random.default_rng(0)
    clients = np.repeat([0, 1, 2], 4)
    has_image = np.array([True] * 8 + [False] * 4)
    has_text = np.array([True] * 4 + [False] * 4 + [True] * 4)
    fixed = None
    if with_test:
        clients = np.concatenate([clients, [-1] * 4])
        has_image = np.concatenate([has_image, [True, True, False, True]])
        has_text = np.concatenate([has_text, [True, False, True, True]])
        fixed = np.arange(n) >= 12
    return Bundle(
        name="sites", task="multiclass", classes=["x", "y"], labels=rng.integers(0, 2, n),
        groups=np.arange(n) // 2, images=rng.integers(0, 256, (n, 1, 4, 4, 1), dtype=np.uint8),
        texts=[f"t{i}" for i in range(n)], has_image=has_image, has_text=has_text,
        clients=clients, client_names=["a", "b", "c"], fixed_test=fixed,
    )


def test_predefined_clients_are_kept() -> None:
    b = _predefined_bundle()
    sc = build_scenario(b, cfg_for(**{"split.val": 0.0, "split.test": 0.5}))
    assert [(c.name, c.group) for c in sc.clients] == [("a", "multimodal"), ("b", "image_only"), ("c", "text_only")]
    for c in sc.clients:
        items = np.sort(np.concatenate([c.splits[s].idx for s in SPLITS]))
        assert items.tolist() == np.flatnonzero(b.clients == c.cid).tolist()
        assert len(c.splits["test"]) == 2  # one patient of two
    # no predefined test set: the clients' own test splits, under each condition they allow
    own = np.concatenate([c.splits["test"].idx for c in sc.clients])
    assert set(sc.test["text"].idx) == set(own[b.has_text[own]])
    assert set(sc.test["both"].idx) <= set(np.flatnonzero(b.clients == 0))


def test_predefined_test_folder_and_missing_modalities() -> None:
    b = _predefined_bundle(with_test=True)
    sc = build_scenario(b, cfg_for(**{"missing.image": 0.5, "missing.text": 0.5}))
    assert sorted(sc.test["text"].idx.tolist()) == [12, 14, 15]
    assert sorted(sc.test["image"].idx.tolist()) == [12, 13, 15]
    assert sorted(sc.test["both"].idx.tolist()) == [12, 15]
    for c in sc.clients:
        for s in SPLITS:
            v = c.splits[s]
            assert (v.has_img | v.has_txt).all()
            assert not (v.has_img & ~b.has_image[v.idx]).any() and not (v.has_txt & ~b.has_text[v.idx]).any()
    # an item-level gap is honoured by partitioned scenarios too: no row shows what it lacks
    b.clients = b.client_names = None
    sc = build_scenario(b, cfg_for(**{"clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1}))
    for c in sc.clients:
        for s in SPLITS:
            v = c.splits[s]
            assert not (v.has_img & ~b.has_image[v.idx]).any() and not (v.has_txt & ~b.has_text[v.idx]).any()


def test_patient_in_two_predefined_clients_is_an_error() -> None:
    b = _predefined_bundle()
    b.groups = b.groups.copy()
    b.groups[4] = 0  # an item of site b belongs to site a's first patient
    with pytest.raises(DataError, match="identity group 0 .* is in two clients, a and b"):
        build_scenario(b, cfg_for())
    b = _predefined_bundle(with_test=True)
    b.groups = b.groups.copy()
    b.groups[12] = 1
    with pytest.raises(DataError, match="in both the predefined test set and the training pool"):
        build_scenario(b, cfg_for())


def test_bundle_rejects_bad_masks() -> None:
    with pytest.raises(DataError, match="has_text given but the bundle has no such modality"):
        Bundle(name="x", task="multiclass", classes=["a"], labels=np.zeros(2, np.int64),
               groups=np.arange(2), images=np.zeros((2, 1, 2, 2, 1), np.uint8), has_text=np.ones(2, bool))
    with pytest.raises(DataError, match="client ids go up to 1 but only 1 client names"):
        Bundle(name="x", task="multiclass", classes=["a"], labels=np.zeros(2, np.int64), groups=np.arange(2),
               texts=["a", "b"], clients=np.array([0, 1]), client_names=["only"])


def test_client_group_hook_partitions_each_kind_over_its_items():
    bundle = make_bundle(300, n_domains=1)
    kinds = np.array(["multimodal", "image_only", "text_only"], dtype=object)[bundle.groups % 3]
    bundle.client_group = kinds
    sc = build_scenario(bundle, cfg_for(partition="dirichlet"))
    for c in sc.clients:
        for view in c.splits.values():
            assert set(kinds[view.idx]) <= {c.group}
        assert set(kinds[c.splits["train"].idx]) == {c.group}
    assert set(kinds[sc.test["both"].idx]) == {"multimodal"}
    assert set(kinds[sc.test["image"].idx]) == {"image_only"}
    assert set(kinds[sc.test["text"].idx]) == {"text_only"}
    # without the hook every kind of client draws from every item
    plain = build_scenario(make_bundle(300, n_domains=1), cfg_for(partition="dirichlet"))
    assert any(len(set(kinds[v.idx])) > 1 for c in plain.clients for v in c.splits.values())


def test_client_group_hook_errors_name_the_problem():
    bundle = make_bundle(120, n_domains=1)
    bundle.client_group = np.array(["multimodal"] * len(bundle), dtype=object)
    with pytest.raises(DataError, match="no items for image_only clients"):
        build_scenario(bundle, cfg_for())
    kinds = np.array(["multimodal"] * len(bundle), dtype=object)
    shared = np.flatnonzero(np.bincount(bundle.groups) > 1)[0]  # a group of several items
    kinds[np.flatnonzero(bundle.groups == shared)[0]] = "image_only"
    bundle.client_group = kinds
    with pytest.raises(DataError, match="identity group"):
        build_scenario(bundle, cfg_for(**{"clients.image_only": 0, "clients.text_only": 0}))
    with pytest.raises(DataError, match="client_group values"):
        Bundle(name="x", task="multiclass", classes=["a"], labels=np.zeros(2, np.int64),
               groups=np.arange(2), texts=["a", "b"], client_group=np.array(["everyone", "x"]))

@pytest.mark.parametrize("holdout", ["d1", "1"])
def test_holdout_domain_is_never_trained_on_and_is_the_only_test_domain(holdout: str) -> None:
    bundle = make_bundle(n_domains=3)
    sc = build_scenario(bundle, cfg_for(**{"clients.multimodal": 3, "clients.image_only": 3,
                                           "clients.text_only": 1, "domains.holdout": holdout}))
    assert sc.holdout == 1
    assert [c.domain for c in sc.clients] == [0, 2, 0, 2, 0, 2, 0]
    for c in sc.clients:
        for s in SPLITS:
            assert (c.splits[s].dom != 1).all()
    for cond in ("both", "image"):
        assert (sc.test[cond].dom == 1).all() and len(sc.test[cond]) == len(sc.test["text"])
    image_client = sc.clients[3]
    assert (sc.test_view_for(image_client).dom == 1).all() and len(sc.test_view_for(image_client)) > 0


def test_no_holdout_keeps_every_domain_in_the_test_views() -> None:
    sc = build_scenario(make_bundle(n_domains=3), cfg_for())
    assert sc.holdout is None
    assert set(np.unique(sc.test["image"].dom)) == {0, 1, 2}


@pytest.mark.parametrize("value, needle", [("d9", "not an image domain"), ("7", "not an image domain")])
def test_bad_holdout_names_the_key(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="domains.holdout") as err:
        build_scenario(make_bundle(n_domains=3), cfg_for(**{"domains.holdout": value}))
    assert needle in str(err.value)


def test_holdout_needs_two_domains() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        build_scenario(make_bundle(n_domains=1), cfg_for(**{"domains.holdout": "0"}))
