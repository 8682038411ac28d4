"""What the chest X-ray loaders share: samples, problem lists, image decoding, bundle assembly.

Each medical loader (``mimic_cxr``, ``iu_xray``, ``folder``, ``iu_reports``) only *scans* its
layout into :class:`Sample` records and notes every defect it sees in a :class:`Problems` list
(a missing file, an empty report, a label row with nothing behind it). A row with a problem
stays a sample with whatever it still has, so its other files are checked too (every problem
is listed in one pass); any problem means no bundle is built. :func:`assemble` then
decodes the images once (greyscale, resized, cached on disk by file content), records the
unreadable ones, checks that no patient sits in two clients or two splits, and builds the
:class:`~adamodal.data.base.Bundle`. Loading raises one :class:`DataError` listing every
problem, one line each; ``adamodal data check`` prints the same lines, or a summary when there
are none, so a malformed folder fails the same way before and during training.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from adamodal.cache import atomic_save_npz, content_hash
from adamodal.data.base import Bundle, DatasetSource, Task
from adamodal.errors import ConfigError, DataError

#: the 14 CheXpert / NegBio observations, in the column order of the MIMIC-CXR-JPG label files
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)
#: what an uncertain (-1) finding becomes: 0, 1, or unknown (NaN: no loss, no metric)
UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")
LABEL_KINDS: tuple[str, ...] = ("findings", "normal")
NORMAL_CLASSES: list[str] = ["abnormal", "normal"]
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: bump when decoding changes, so stale decoded caches are never reused
_DECODE_VERSION = "1"


@dataclass
class Sample:
    """One item before decoding: where its pixels are, its report, its labels and its owner.

    ``label`` is a finding vector (1/0, NaN = unknown) for multi-label data sets, or a class
    name. ``source`` is the file (and row) the sample was read from, used in problem lines.
    """

    id: str
    patient: str
    label: Sequence[float] | str
    image: Path | None = None
    text: str | None = None
    source: str = ""
    client: str | None = None
    test: bool = False


@dataclass
class Problems:
    """Every defect found in a data set, as ``(path, reason)``; raised together, one per line."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: object, reason: str) -> None:
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    def lines(self) -> list[str]:
        return [f"{path}: {reason}" for path, reason in self.items]

    def raise_if_any(self, name: str) -> None:
        if self.items:
            raise DataError(
                f"{name}: {len(self.items)} problem(s) in the data (see `adamodal data check`):\n"
                + "\n".join(self.lines())
            )


# ----------------------------------------------------------------------------- options


def choice_option(options: dict[str, object], dataset: str, key: str, default: str,
                  choices: Sequence[str]) -> str:
    value = str(options.get(key, default))
    if value not in choices:
        raise ConfigError(f"{dataset}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def size_option(options: dict[str, object], dataset: str, default: int = 64) -> int:
    value = options.get("size", default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 8 <= int(value) <= 1024:
        raise ConfigError(f"{dataset}.size must be an integer side length in 8..1024, got {value!r}")
    return int(value)


def root_option(options: dict[str, object], dataset: str, what: str) -> Path:
    """The data folder a user points at (``<dataset>.root``), checked to exist."""
    raw = str(options.get("root", "") or "").strip()
    if not raw:
        raise ConfigError(
            f"{dataset}.root is not set: point it at {what}, e.g. --set {dataset}.root=/data/x"
        )
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {dataset}.root is not a folder")
    return root


def uncertain_value(raw: str, policy: str) -> float:
    """A CheXpert cell (``1.0``, ``0.0``, ``-1.0`` or blank) under an uncertainty policy.

    Blank means the finding was not mentioned: 0. Raises ValueError on anything else.
    """
    text = raw.strip()
    if text == "":
        return 0.0
    value = float(text)
    if value == 1.0:
        return 1.0
    if value == 0.0:
        return 0.0
    if value == -1.0:
        return {"zeros": 0.0, "ones": 1.0, "ignore": float("nan")}[policy]
    raise ValueError(f"{raw!r} is not 1.0, 0.0, -1.0 or blank")


# ----------------------------------------------------------------------------- reports

_SECTION_RE = re.compile(r"^\s*([A-Z][A-Z &/()-]{2,40}):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Free-text radiology report -> ``{SECTION: body}`` by its upper-case ``NAME:`` headers."""
    sections: dict[str, str] = {}
    heads = list(_SECTION_RE.finditer(text))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        sections[m.group(1).strip()] = " ".join(text[m.end():end].split())
    return sections


def findings_impression(text: str) -> str:
    """FINDINGS then IMPRESSION of a report (the part that describes the image), whitespace
    normalised; a report without those headers is kept whole (minus a ``FINAL REPORT`` line)."""
    sections = report_sections(text)
    parts = [sections.get(k, "") for k in ("FINDINGS", "IMPRESSION")]
    if any(parts):
        return " ".join(p for p in parts if p).strip()
    body = re.sub(r"^\s*FINAL REPORT\s*$", "", text, flags=re.MULTILINE)
    return " ".join(body.split())


# ----------------------------------------------------------------------------- images


def read_gray(path: Path, size: int) -> np.ndarray:
    """One image as ``[size, size]`` uint8 greyscale. Large JPEGs are decoded at reduced scale
    (``draft``), which makes a 2,500-px MIMIC image about 10x cheaper to read."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("L", (size * 2, size * 2))
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def _decode_key(paths: Sequence[Path], size: int) -> str:
    stamps = []
    for p in paths:
        try:
            st = p.stat()
            stamps.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            stamps.append(f"{p}|missing")
    return content_hash("decoded-gray", _DECODE_VERSION, size, stamps)


def decode_images(paths: Sequence[Path], size: int, cache: Path, problems: Problems,
                  name: str) -> np.ndarray:
    """``[M, size, size]`` uint8 for ``paths``, decoded once and cached (keyed by path, size
    and modification time); an unreadable file is a problem and leaves a zero image."""
    out_path = Path(cache) / "medical" / f"{name}-{size}px-{_decode_key(paths, size)}.npz"
    if out_path.is_file():
        try:
            with np.load(out_path, allow_pickle=False) as z:
                images, bad = z["images"], z["bad"]
                reasons = z["reasons"] if "reasons" in z.files else np.full(len(paths), "")
            if images.shape == (len(paths), size, size) and reasons.shape == (len(paths),):
                for i in np.flatnonzero(bad):
                    problems.add(paths[i], f"unreadable image ({reasons[i]})" if reasons[i] else "unreadable image")
                return images
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # corrupt cache: decode again
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    errors: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            images[i] = read_gray(paths[i], size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(paths))))
    for i in sorted(errors):
        problems.add(paths[i], f"unreadable image ({errors[i]})")
    bad = np.zeros(len(paths), bool)
    bad[list(errors)] = True
    reasons = np.array([errors.get(i, "") for i in range(len(paths))], dtype=str)
    atomic_save_npz(out_path, images=images, bad=bad, reasons=reasons)
    return images


# ----------------------------------------------------------------------------- assembly


def _integrity(samples: Sequence[Sample], problems: Problems) -> None:
    """A patient in two clients, or in the test set and the training pool, is a leak."""
    first_client: dict[str, Sample] = {}
    first_split: dict[str, Sample] = {}
    seen_client: set[tuple[str, str | None]] = set()
    seen_split: set[tuple[str, bool]] = set()
    for s in samples:
        if s.client is not None and not s.test:
            prev = first_client.setdefault(s.patient, s)
            if prev.client != s.client and (s.patient, s.client) not in seen_client:
                seen_client.add((s.patient, s.client))
                problems.add(s.source, f"patient {s.patient} is in two clients "
                             f"({prev.client} and {s.client})")
        prev = first_split.setdefault(s.patient, s)
        if prev.test != s.test and (s.patient, s.test) not in seen_split:
            seen_split.add((s.patient, s.test))
            problems.add(s.source, f"patient {s.patient} is in two splits (test and train)")


def assemble(
    name: str,
    samples: Sequence[Sample],
    *,
    task: Task,
    classes: Sequence[str],
    size: int,
    cache: Path,
    problems: Problems,
    meta: dict[str, object] | None = None,
) -> Bundle | None:
    """Decode and check ``samples`` into a Bundle; ``None`` when ``problems`` is not empty
    (the caller raises them, or ``data check`` prints them)."""
    if not samples and not problems:
        problems.add(name, "no samples found")
    _integrity(samples, problems)
    with_image = [i for i, s in enumerate(samples) if s.image is not None]
    pixels = None
    if with_image:
        pixels = decode_images([samples[i].image for i in with_image], size, cache, problems, name)  # type: ignore[misc]
    if problems:
        return None
    n = len(samples)
    images = None
    has_image = None
    if pixels is not None:
        images = np.zeros((n, 1, size, size, 1), dtype=np.uint8)
        images[with_image, 0, :, :, 0] = pixels
        has_image = np.zeros(n, bool)
        has_image[with_image] = True
    texts = None
    has_text = None
    if any(s.text is not None for s in samples):
        texts = [s.text or "" for s in samples]
        has_text = np.array([s.text is not None for s in samples], bool)
    if task == "multilabel":
        labels = np.array([list(s.label) for s in samples], dtype=np.float32).reshape(n, len(classes))
    else:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[str(s.label)] for s in samples], dtype=np.int64)
    patients = {p: i for i, p in enumerate(sorted({s.patient for s in samples}))}
    groups = np.array([patients[s.patient] for s in samples], dtype=np.int64)
    fixed_test = np.array([s.test for s in samples], bool)
    clients = client_names = None
    if any(s.client is not None for s in samples):
        client_names = sorted({s.client for s in samples if s.client is not None and not s.test})
        cindex = {c: i for i, c in enumerate(client_names)}
        clients = np.array([-1 if s.test or s.client is None else cindex[s.client] for s in samples],
                           dtype=np.int64)
    info = dict(meta or {})
    info.setdefault("items", n)
    info.setdefault("patients", len(patients))
    if pixels is not None:
        info.setdefault("image_size", f"{size}x{size} greyscale (3 channels for the frozen tower)")
    return Bundle(
        name=name, task=task, classes=list(classes), labels=labels, groups=groups, images=images,
        domains=["default"], texts=texts, fixed_test=fixed_test if fixed_test.any() else None,
        meta=info,
        has_image=None if has_image is None or has_image.all() else has_image,
        has_text=None if has_text is None or has_text.all() else has_text,
        clients=clients, client_names=client_names,
    )


@dataclass
class Scan:
    """What a loader read from its layout, before decoding. ``samples`` may hold rows that have
    problems (so their images are decoded and checked too); there is then no bundle."""

    samples: list[Sample]
    task: Task
    classes: list[str]
    meta: dict[str, object] = field(default_factory=dict)


class MedicalSource(DatasetSource):
    """A loader that scans a layout into samples; ``load`` and ``check`` share everything."""

    size_default: ClassVar[int] = 64

    def scan(self, cache: Path, problems: Problems) -> Scan:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_size(self) -> int:
        return size_option(self.options, self.name, self.size_default)

    def check(self, cache: Path) -> tuple[Bundle | None, Problems]:
        """The bundle, or ``None`` and every problem found (nothing is raised for bad data)."""
        problems = Problems()
        scan = self.scan(Path(cache), problems)
        bundle = assemble(self.name, scan.samples, task=scan.task, classes=scan.classes,
                          size=self.image_size(), cache=Path(cache), problems=problems,
                          meta=scan.meta)
        return bundle, problems

    def load(self, cache: Path) -> Bundle:
        bundle, problems = self.check(cache)
        problems.raise_if_any(self.name)
        assert bundle is not None
        return bundle


def finding_vector(present: Iterable[str], classes: Sequence[str]) -> list[float]:
    have = set(present)
    return [1.0 if c in have else 0.0 for c in classes]


def normal_label(vector: Sequence[float], classes: Sequence[str]) -> str:
    """``normal`` when the ``No Finding`` entry is 1, else ``abnormal``."""
    v = vector[list(classes).index("No Finding")]
    return "normal" if not math.isnan(v) and v == 1.0 else "abnormal"


def read_report(path: Path, problems: Problems) -> str | None:
    """A report's FINDINGS + IMPRESSION, or None (and a problem naming the file) when it is
    unreadable or empty."""
    try:
        text = findings_impression(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, f"unreadable report ({exc})")
        return None
    if not text:
        problems.add(path, "empty report")
        return None
    return text
