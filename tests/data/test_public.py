"""The server's public paired set (``split.public``): held out from every client and from
the server's test set, paired, in every domain clients see; absent (and nothing else
changed) at 0; one clear error naming the key where it cannot exist."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.data.scenario import SPLITS, build_scenario
from adamodal.errors import ConfigError
from tests.data.test_scenario import (
    _predefined_bundle,
    cfg_for,
    client_cells,
    groups_of,
    make_bundle,
)


def test_public_items_are_nobody_elses():
    bundle = make_bundle(400, n_domains=3)
    sc = build_scenario(bundle, cfg_for(**{"split.public": 0.1}))
    assert sc.public is not None
    public = groups_of(bundle, sc.public)
    n_groups = len(np.unique(bundle.groups))
    assert len(public) == round(0.1 * n_groups)
    for (cid, split), view in client_cells(sc).items():
        assert not public & groups_of(bundle, view), f"client {cid} {split} holds public items"
    for cond, view in sc.test.items():
        assert not public & groups_of(bundle, view), f"server test {cond} holds public items"
    # every public item appears once per image domain, with both modalities
    assert sc.public.has_img.all() and sc.public.has_txt.all()
    pairs = set(zip(sc.public.idx.tolist(), sc.public.dom.tolist(), strict=True))
    assert len(pairs) == len(sc.public) == 3 * len(np.unique(sc.public.idx))


def test_the_public_set_comes_from_the_pool_and_zero_changes_nothing():
    bundle = make_bundle(400)
    base = build_scenario(bundle, cfg_for())
    zero = build_scenario(bundle, cfg_for(**{"split.public": 0.0}))
    with_public = build_scenario(bundle, cfg_for(**{"split.public": 0.1}))
    assert base.public is None and zero.public is None
    for a, b in zip(base.clients, zero.clients, strict=True):
        for s in SPLITS:
            np.testing.assert_array_equal(a.splits[s].idx, b.splits[s].idx)
    # the server's test set is drawn before the public set: the same items either way
    for cond in base.test:
        np.testing.assert_array_equal(base.test[cond].idx, with_public.test[cond].idx)
    held = {int(g) for g in bundle.groups[with_public.public.idx]}
    seen = set().union(*(groups_of(bundle, v) for v in client_cells(with_public).values()))
    before = set().union(*(groups_of(bundle, v) for v in client_cells(base).values()))
    assert seen | held == before and not seen & held


def test_leave_one_domain_out_keeps_the_held_out_domain_out_of_the_public_set():
    bundle = make_bundle(300, n_domains=3)
    sc = build_scenario(bundle, cfg_for(**{"split.public": 0.1, "domains.holdout": "d1"}))
    assert set(sc.public.dom.tolist()) == {0, 2}


@pytest.mark.parametrize(("bundle", "needle"), [
    (make_bundle(100, text=False), "only image"),
    (make_bundle(100, image=False), "only text"),
    (_predefined_bundle(), "defines its own clients"),
])
def test_impossible_public_sets_name_the_key(bundle, needle):
    overrides = {"split.public": 0.1}
    if bundle.texts is None:
        overrides.update({"clients.multimodal": 0, "clients.text_only": 0})
    elif bundle.images is None:
        overrides.update({"clients.multimodal": 0, "clients.image_only": 0})
    with pytest.raises(ConfigError, match="split.public") as err:
        build_scenario(bundle, cfg_for(**overrides))
    assert needle in str(err.value)


def test_a_public_set_that_leaves_no_clients_data_is_an_error():
    with pytest.raises(ConfigError, match="split.public=0.9.*leaves no items"):
        build_scenario(make_bundle(100), cfg_for(**{"split.public": 0.9}))
