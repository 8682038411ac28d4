"""The emoji data set on the real npm packages, plus its selection rules on a synthetic list."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adamodal.cache import cache_dir
from adamodal.data import get_source
from adamodal.data.base import Bundle
from adamodal.data.emoji import VENDORS, EmojiSource, _composite_white, select_items
from adamodal.errors import ConfigError


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return EmojiSource().load(cache_dir())


@pytest.fixture(scope="module")
def with_variants() -> Bundle:
    return EmojiSource({"variants": True}).load(cache_dir())


def _emoji_json() -> list[dict]:
    return json.loads((cache_dir() / "emoji" / "apple" / "emoji.json").read_text("utf-8"))


def test_shapes_and_counts(bundle: Bundle) -> None:
    assert bundle.name == "emoji" and bundle.task == "multiclass"
    assert bundle.modalities == ("image", "text")
    assert bundle.domains == ["apple", "google", "twitter", "facebook"]
    assert bundle.images is not None and bundle.images.dtype == np.uint8
    n = len(bundle)
    assert 1800 <= n <= 1900  # 1,852 in 16.0.0
    assert bundle.images.shape == (n, 4, 64, 64, 3)
    assert bundle.labels.dtype == np.int64 and bundle.groups.dtype == np.int64
    assert bundle.fixed_test is None


def test_categories(bundle: Bundle) -> None:
    assert bundle.num_classes == 9 and "Component" not in bundle.classes
    assert bundle.classes == sorted(bundle.classes)
    counts = np.bincount(bundle.labels, minlength=9)
    assert counts.min() >= 80 and counts.sum() == len(bundle)
    assert bundle.classes[int(np.argmax(counts))] == "People & Body"


def test_subcategory_label() -> None:
    sub = get_source("emoji", {"label": "subcategory"}).load(cache_dir())
    assert 90 <= sub.num_classes <= 110
    assert "face-smiling" in sub.classes and "country-flag" in sub.classes


def test_texts(bundle: Bundle) -> None:
    assert bundle.texts is not None and len(bundle.texts) == len(bundle)
    assert all(t.strip() and t == t.lower() for t in bundle.texts)
    assert bundle.texts[0] == "grinning face; grinning"
    assert "_" not in "".join(bundle.texts[:200])


def test_groups_one_per_base_emoji(bundle: Bundle) -> None:
    assert np.array_equal(bundle.groups, np.arange(len(bundle)))


def test_composited_on_white_from_real_pngs(bundle: Bundle) -> None:
    """Pixels are exactly white where the source PNG is transparent, untouched where opaque."""
    items = select_items(_emoji_json(), variants=False)
    assert len(items) == len(bundle)
    assert bundle.images is not None
    checked_clear = checked_opaque = 0
    for i in (0, 1, 500, 1000, len(items) - 1):
        for d, vendor in enumerate(VENDORS):
            path = cache_dir() / "emoji" / vendor / "64" / items[i]["image"]
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
            got = bundle.images[i, d]
            clear = rgba[..., 3] == 0
            opaque = rgba[..., 3] == 255
            assert clear.any() and opaque.any()
            assert (got[clear] == 255).all()
            assert np.array_equal(got[opaque], rgba[..., :3][opaque])
            checked_clear += int(clear.sum())
            checked_opaque += int(opaque.sum())
    assert checked_clear > 1000 and checked_opaque > 1000
    # no image is blank; white glyphs (white square, cloud) stay faint but visible on white
    flat = bundle.images.reshape(len(bundle), 4, -1)
    assert (flat.min(axis=2) < 255).all()
    assert (flat.min(axis=2) < 150).mean() > 0.95


def test_decoded_cache_file(bundle: Bundle) -> None:
    src = EmojiSource()
    path = src.decoded_path(cache_dir())
    assert path.is_file() and path.suffix == ".npz"
    assert path != EmojiSource({"variants": True}).decoded_path(cache_dir())
    again = src.load(cache_dir())
    assert again.texts == bundle.texts and np.array_equal(again.labels, bundle.labels)


def test_skin_tone_variants_share_groups(bundle: Bundle, with_variants: Bundle) -> None:
    v = with_variants
    assert v.texts is not None and bundle.texts is not None and v.images is not None
    assert 3500 <= len(v) <= 3700  # 3,637 in 16.0.0
    assert v.images.shape == (len(v), 4, 64, 64, 3)
    assert len(np.unique(v.groups)) == len(bundle)  # one group per base emoji
    assert v.classes == bundle.classes
    sizes = np.bincount(v.groups)
    assert set(np.unique(sizes)) <= {1, 6, 26} and (sizes == 6).sum() > 250
    g = int(np.flatnonzero(sizes == 6)[0])
    members = np.flatnonzero(v.groups == g)
    texts = [v.texts[i] for i in members]
    assert "skin tone" not in texts[0]
    assert all(t.startswith(texts[0]) and t.endswith("skin tone") for t in texts[1:])
    assert len(set(v.labels[members])) == 1
    # the base emoji appear in the same order, with the same content, in both loads
    base_rows = [i for i, t in enumerate(v.texts) if "skin tone" not in t]
    assert [v.texts[i] for i in base_rows] == bundle.texts
    assert np.array_equal(v.images[base_rows[:50]], bundle.images[:50])  # type: ignore[index]


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="emoji.label"):
        EmojiSource({"label": "colour"}).load(cache_dir())
    with pytest.raises(ConfigError, match="emoji.variants"):
        EmojiSource({"variants": "yes"}).load(cache_dir())


def test_composite_white_synthetic() -> None:
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    out = _composite_white(rgba)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[0, 2].tolist() == [127, 127, 127]


def _entry(name: str, order: int, category: str = "Objects", **kw: object) -> dict:
    e = {
        "name": name,
        "unified": f"{order:04X}",
        "image": f"{order:04x}.png",
        "short_names": [name.lower().replace(" ", "_")],
        "category": category,
        "subcategory": "sub",
        "sort_order": order,
        **{f"has_img_{v}": True for v in VENDORS},
    }
    e.update(kw)
    return e


def test_select_items_rules() -> None:
    hand = _entry(
        "WAVING HAND",
        2,
        skin_variations={
            "1F3FB": {
                "unified": "A-1F3FB",
                "image": "a.png",
                **{f"has_img_{v}": True for v in VENDORS},
            },
            "1F3FF": {"unified": "A-1F3FF", "image": "b.png", "has_img_apple": False},
        },
    )
    emoji = [
        _entry("ZED", 3),
        hand,
        _entry("SWATCH", 1, category="Component"),
        _entry("ONLY APPLE", 0, has_img_facebook=False),
    ]
    base = select_items(emoji, variants=False)
    assert [it["text"] for it in base] == ["waving hand", "zed"]
    assert [it["group"] for it in base] == [0, 1]
    full = select_items(emoji, variants=True)
    assert [it["text"] for it in full] == ["waving hand", "waving hand; light skin tone", "zed"]
    assert [it["group"] for it in full] == [0, 0, 1]
    assert full[1]["image"] == "a.png" and full[1]["category"] == "Objects"
