"""Emoji: the embedded default paired image+text data set, four vendors as four image domains.

Source: the npm packages ``emoji-datasource-{apple,google,twitter,facebook}`` (images
Apache-2.0 / vendor licences, data MIT), fetched with ``npm pack`` because npm is reachable
offline. Each item is one emoji drawn by all four vendors (64x64, alpha-composited on white)
with its name and short names as text, labelled by its Unicode category, so the same concept
appears in four visual styles, like PACS, and in words.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from adamodal.cache import atomic_save_npz
from adamodal.data.base import Bundle, DatasetSource
from adamodal.data.fetch import npm_pack
from adamodal.errors import ConfigError, DataError

VERSION = "16.0.0"
VENDORS: tuple[str, ...] = ("apple", "google", "twitter", "facebook")
SIZE = 64
#: bump when the decoded cache layout or content rules change, so stale caches are rebuilt
_FORMAT = 1
_LABELS = ("category", "subcategory")
#: CLDR names of the Fitzpatrick modifiers, appended to the text of skin-tone variants
SKIN_TONES: dict[str, str] = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def package_name(vendor: str) -> str:
    return f"emoji-datasource-{vendor}"


def _extract_vendor(tgz: Path, vendor: str, dest: Path) -> None:
    """Stream ``emoji.json`` and the 64-px PNGs of one vendor out of its tarball into ``dest``.

    Streaming avoids holding a 100 MB tarball in memory; the rename at the end means a
    half-extracted folder never looks complete.
    """
    prefix = f"package/img/{vendor}/{SIZE}/"
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{vendor}-", dir=dest.parent))
    try:
        (tmp / str(SIZE)).mkdir()
        n_png, has_json = 0, False
        try:
            with tarfile.open(tgz, "r|gz") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    if member.name == "package/emoji.json":
                        out = tmp / "emoji.json"
                        has_json = True
                    elif member.name.startswith(prefix) and member.name.endswith(".png"):
                        base = member.name[len(prefix) :]
                        if "/" in base or base.startswith("."):
                            continue  # never write outside the target folder
                        out = tmp / str(SIZE) / base
                        n_png += 1
                    else:
                        continue
                    src = tf.extractfile(member)
                    if src is None:
                        continue
                    out.write_bytes(src.read())
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(
                f"{tgz}: corrupt tarball ({exc}); delete it and run `adamodal data fetch emoji`"
            ) from exc
        if not has_json or n_png == 0:
            raise DataError(
                f"{tgz}: no package/emoji.json or {prefix}*.png inside; delete it and "
                "run `adamodal data fetch emoji`"
            )
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary shared files
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "emoji.json").is_file():  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_vendor(root: Path, vendor: str) -> Path:
    """``npm pack`` one vendor's package (if needed) and extract its images (if needed)."""
    dest = root / vendor
    if (dest / "emoji.json").is_file():
        return dest
    tgz = npm_pack(f"{package_name(vendor)}@{VERSION}", root)
    _extract_vendor(tgz, vendor, dest)
    return dest


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB uint8 over a white background (alpha 0 gives exactly 255)."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _read_png(path: Path) -> np.ndarray:
    """One vendor image as 64x64x3 uint8 on white; DataError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"{path}: unreadable image ({exc}); delete {path.parent.parent} and run "
            "`adamodal data fetch emoji`"
        ) from exc
    return _composite_white(arr)


def _text(name: str, short_names: list[str], tone: str | None) -> str:
    """``name; short name; ...`` lower-cased, duplicates dropped, skin tone words appended."""
    parts: list[str] = []
    for part in [name.lower(), *(s.replace("_", " ").lower() for s in short_names)]:
        part = " ".join(part.split())
        if part and part not in parts:
            parts.append(part)
    if tone:
        parts.append(tone)
    return "; ".join(parts)


def _tone_words(key: str) -> str:
    """``1F3FB-1F3FF`` -> ``light skin tone, dark skin tone``."""
    return ", ".join(SKIN_TONES.get(code.upper(), code.lower()) for code in key.split("-"))


def _has_all(entry: dict[str, Any]) -> bool:
    return all(bool(entry.get(f"has_img_{v}")) for v in VENDORS)


def select_items(emoji: list[dict[str, Any]], variants: bool) -> list[dict[str, Any]]:
    """The items of the data set, in a fixed order, from the parsed ``emoji.json``.

    Keeps base emoji drawn by all four vendors, minus the ``Component`` category (bare skin
    tone swatches and hair parts, not concepts); with ``variants`` also their skin-tone
    variants drawn by all four, sharing the base emoji's group.
    """
    bases = [e for e in emoji if e.get("category") != "Component" and _has_all(e)]
    bases.sort(key=lambda e: (int(e.get("sort_order", 0)), str(e["unified"])))
    items: list[dict[str, Any]] = []
    for group, e in enumerate(bases):
        common = {
            "group": group,
            "category": str(e["category"]),
            "subcategory": str(e["subcategory"]),
        }
        items.append(
            {
                **common,
                "unified": str(e["unified"]),
                "image": str(e["image"]),
                "text": _text(str(e["name"]), list(e.get("short_names") or []), None),
            }
        )
        if not variants:
            continue
        for key, var in (e.get("skin_variations") or {}).items():
            if not _has_all(var):
                continue
            items.append(
                {
                    **common,
                    "unified": str(var["unified"]),
                    "image": str(var["image"]),
                    "text": _text(
                        str(e["name"]), list(e.get("short_names") or []), _tone_words(key)
                    ),
                }
            )
    return items


class EmojiSource(DatasetSource):
    """Emoji from four vendors (domains) with names as text; label = Unicode (sub)category."""

    name: ClassVar[str] = "emoji"
    modalities = ("image", "text")
    task = "multiclass"
    description: ClassVar[str] = (
        "1,852 emoji x 4 vendor styles (64x64) + names; 9 categories (npm emoji-datasource)"
    )
    options_defaults: ClassVar[dict[str, object]] = {"label": "category", "variants": False}

    def _opts(self) -> tuple[str, bool]:
        label = str(self.options.get("label", self.options_defaults["label"]))
        if label not in _LABELS:
            raise ConfigError(f"emoji.label must be one of {', '.join(_LABELS)}, got {label!r}")
        variants = self.options.get("variants", self.options_defaults["variants"])
        if not isinstance(variants, (bool, np.bool_)):
            raise ConfigError(f"emoji.variants must be true or false, got {variants!r}")
        return label, bool(variants)

    def fetch(self, cache: Path) -> Path:
        """``npm pack`` the four vendor packages (in parallel) and extract their 64-px images."""
        root = Path(cache) / self.name
        root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=len(VENDORS)) as pool:
            list(pool.map(lambda v: _fetch_vendor(root, v), VENDORS))
        return root

    def decoded_path(self, cache: Path) -> Path:
        """The npz of decoded images and texts for the current ``variants`` option."""
        _, variants = self._opts()
        kind = "variants" if variants else "base"
        return Path(cache) / self.name / f"decoded-{VERSION}-f{_FORMAT}-{kind}.npz"

    def _decode(self, root: Path, variants: bool) -> dict[str, np.ndarray]:
        """Read ``emoji.json`` and every vendor PNG of the selected items into arrays."""
        meta_file = root / VENDORS[0] / "emoji.json"
        try:
            emoji = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{meta_file}: unreadable ({exc}); delete {meta_file.parent} and run "
                "`adamodal data fetch emoji`"
            ) from exc
        items = select_items(emoji, variants)
        images = np.empty((len(items), len(VENDORS), SIZE, SIZE, 3), dtype=np.uint8)

        def read_vendor(d: int) -> None:
            folder = root / VENDORS[d] / str(SIZE)
            for i, item in enumerate(items):
                path = folder / item["image"]
                if not path.is_file():
                    raise DataError(
                        f"{path}: missing although emoji.json lists it; delete {folder.parent} "
                        "and run `adamodal data fetch emoji`"
                    )
                images[i, d] = _read_png(path)

        with ThreadPoolExecutor(max_workers=len(VENDORS)) as pool:
            list(pool.map(read_vendor, range(len(VENDORS))))
        return {
            "images": images,
            "texts": np.array([it["text"] for it in items], dtype=str),
            "category": np.array([it["category"] for it in items], dtype=str),
            "subcategory": np.array([it["subcategory"] for it in items], dtype=str),
            "groups": np.array([it["group"] for it in items], dtype=np.int64),
            "unified": np.array([it["unified"] for it in items], dtype=str),
        }

    def _read_decoded(self, path: Path) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None when the cache is missing or unreadable (then rebuilt)."""
        if not path.is_file():
            return None
        keys = ("images", "texts", "category", "subcategory", "groups", "unified")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def load(self, cache: Path) -> Bundle:
        """Decode once into an npz keyed by the options; later loads read only that file."""
        label, variants = self._opts()
        path = self.decoded_path(cache)
        arrays = self._read_decoded(path)
        if arrays is None:
            root = self.fetch(cache)
            arrays = self._decode(root, variants)
            atomic_save_npz(path, **arrays)
        values = arrays[label]
        classes = sorted({str(v) for v in values})
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[str(v)] for v in values], dtype=np.int64)
        return Bundle(
            name=self.name,
            task="multiclass",
            classes=classes,
            labels=labels,
            groups=arrays["groups"].astype(np.int64),
            images=arrays["images"],
            domains=list(VENDORS),
            texts=[str(t) for t in arrays["texts"]],
            meta={
                "source": ", ".join(f"npm {package_name(v)}@{VERSION}" for v in VENDORS),
                "label": label,
                "variants": variants,
                "items": int(len(labels)),
                "base_emoji": int(len(np.unique(arrays["groups"]))),
                "image_size": f"{SIZE}x{SIZE}, alpha composited on white",
                "licence": "images Apache-2.0 / vendor terms, data MIT",
                "decoded_cache": str(path),
            },
        )


SOURCE = EmojiSource

__all__ = ["SOURCE", "EmojiSource", "select_items"]
