"""The mix data set: one union label space, each source on its own kind of client."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.cache import cache_dir
from adamodal.config import resolve
from adamodal.data import get_source
from adamodal.data.mix import label_ranges
from adamodal.data.scenario import build_scenario
from adamodal.errors import ConfigError

OPTS = {"max_train": 200, "max_test": 50, "size": 16}


@pytest.fixture(scope="module")
def bundle():
    return get_source("mix", OPTS).load(cache_dir())


def test_label_offsets_and_sources(bundle):
    assert label_ranges(bundle) == {"fmnist": (0, 10), "newsgroups": (10, 30), "emoji": (30, 39)}
    assert bundle.classes[0] == "fmnist:T-shirt/top" and bundle.classes[10].startswith("newsgroups:")
    kinds = bundle.client_group
    fm, ng, em = (kinds == "image_only"), (kinds == "text_only"), (kinds == "multimodal")
    assert fm.sum() == ng.sum() == 250  # 200 train + 50 test each
    assert 0 < em.sum() <= 250
    assert bundle.labels[fm].min() >= 0 and bundle.labels[fm].max() < 10
    assert bundle.labels[ng].min() >= 10 and bundle.labels[ng].max() < 30
    assert bundle.labels[em].min() >= 30 and bundle.labels[em].max() < 39
    # every source keeps its own labels: the emoji categories match the emoji source's
    emoji = get_source("emoji").load(cache_dir())
    assert sorted({c.split(":", 1)[1] for c in bundle.classes[30:]}) == sorted(emoji.classes)
    # one image shape for all; Fashion-MNIST grey repeated over RGB; texts only where they exist
    assert bundle.images.shape[1:] == (1, 16, 16, 3)
    grey = bundle.images[fm][:, 0]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and grey.max() > 0
    assert all(bundle.texts[i] == "" for i in np.flatnonzero(fm))
    assert all(bundle.texts[i] for i in np.flatnonzero(ng | em))
    assert not bundle.images[ng].any()
    # identity groups never span two sources
    for a, b in ((fm, ng), (fm, em), (ng, em)):
        assert not set(bundle.groups[a]) & set(bundle.groups[b])


def test_scenario_puts_each_source_on_its_kind_of_client(bundle):
    cfg = resolve(overrides={
        "dataset": "mix", "clients.multimodal": 2, "clients.image_only": 3, "clients.text_only": 2,
        "partition": "dirichlet", "partition.alpha": 0.5, "seed": 1,
    })
    sc = build_scenario(bundle, cfg)
    assert sc.counts() == {"multimodal": 2, "image_only": 3, "text_only": 2}
    for c in sc.clients:
        for view in c.splits.values():
            assert set(bundle.client_group[view.idx]) <= {c.group}
    used = np.concatenate([v.idx for c in sc.clients for v in c.splits.values()])
    assert len(used) == len(set(used.tolist()))
    # the server's test conditions: image = Fashion-MNIST only, text = the corpus, both = emoji
    for cond, kind in (("both", "multimodal"), ("image", "image_only"), ("text", "text_only")):
        assert set(bundle.client_group[sc.test[cond].idx]) == {kind}
        assert bundle.fixed_test[sc.test[cond].idx].all()
    assert not sc.test["image"].has_txt.any() and not sc.test["text"].has_img.any()


def test_bad_option_is_one_clear_error():
    with pytest.raises(ConfigError, match="mix.text"):
        get_source("mix", {"text": "imdb"}).load(cache_dir())
