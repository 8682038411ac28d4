"""The dataset contract: every data set is one module exposing one :class:`DatasetSource`.

A source turns files in the cache into a :class:`Bundle`: raw images per domain, raw texts,
labels and identity groups, all indexed by item. Everything downstream (partitioning,
feature extraction, training) works on bundles, so adding a data set never touches the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from adamodal.errors import DataError

Modality = Literal["image", "text"]
Task = Literal["multiclass", "multilabel"]
MODALITIES: tuple[Modality, ...] = ("image", "text")
#: the kinds of client, by the modalities they hold
CLIENT_GROUPS: tuple[str, ...] = ("multimodal", "image_only", "text_only")


@dataclass
class Bundle:
    """All items of one data set, in memory.

    Attributes:
        name: data set name (the module name).
        task: ``multiclass`` (labels ``[N]`` int) or ``multilabel`` (labels ``[N, L]`` 0/1).
        classes: class (or finding) names, in label order.
        labels: ``[N]`` int64 class ids, or ``[N, L]`` float32 0/1 for multi-label.
        groups: ``[N]`` int64 identity of each item. Items sharing a group (an emoji and its
            skin-tone variants, a patient's studies) always land in the same client and split,
            so no test item is memorised through a sibling in training.
        images: ``[N, D, H, W, C]`` uint8, one image per item per domain (``D`` domains, e.g.
            the four emoji vendors), or ``None`` for text-only data sets.
        domains: names of the ``D`` image domains (``["default"]`` when there is only one).
        texts: ``N`` strings, or ``None`` for image-only data sets.
        fixed_test: optional ``[N]`` bool mask of items forming a predefined global test set
            (e.g. Fashion-MNIST's official test split); ``None`` lets the scenario hold one out.
        meta: free-form facts printed by ``adamodal data info`` (source package, version...).
        has_image: optional ``[N]`` bool: which items really have an image. Real collections
            mix studies with and without pixels (a report whose X-ray was never exported); such
            an item holds a zero placeholder in ``images`` and the scenario masks it out.
            ``None`` means every item has one (when ``images`` is set).
        has_text: the same for texts (a missing report is an empty placeholder string).
        clients: optional ``[N]`` int64 predefined client of each item (``-1``: in no client,
            e.g. a global test folder). Sites define their own clients; when set, the scenario
            uses them instead of partitioning, and each client's modalities are what its items
            have. ``client_names`` names them (index = client id).

    Multi-label ``labels`` may hold NaN where a finding's value is unknown (the ``ignore``
    policy for uncertain CheXpert labels); losses and metrics skip those entries.
        client_group: optional ``[N]`` str, the kind of client that may hold each item
            (``multimodal``, ``image_only`` or ``text_only``), for data sets that join
            sources of different modalities (``mix``: Fashion-MNIST only on image-only
            clients, ...). ``None`` lets any client hold any item. With it, the scenario
            partitions each kind's items among that kind's clients only, and the server's
            test condition of a kind (``both``/``image``/``text``) holds that kind's items.
    """

    name: str
    task: Task
    classes: list[str]
    labels: np.ndarray
    groups: np.ndarray
    images: np.ndarray | None = None
    domains: list[str] = field(default_factory=lambda: ["default"])
    texts: list[str] | None = None
    fixed_test: np.ndarray | None = None
    meta: dict[str, object] = field(default_factory=dict)
    has_image: np.ndarray | None = None
    has_text: np.ndarray | None = None
    clients: np.ndarray | None = None
    client_names: list[str] | None = None
    client_group: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Inconsistent arrays are a data problem: one DataError naming the data set."""
        n = len(self.labels)
        if n == 0:
            raise DataError(f"{self.name}: no items")
        if len(self.groups) != n:
            raise DataError(f"{self.name}: {len(self.groups)} groups for {n} labels")
        if self.images is None and self.texts is None:
            raise DataError(f"{self.name}: neither images nor texts (no known modality)")
        if self.images is not None:
            if self.images.ndim != 5 or self.images.shape[0] != n:
                raise DataError(f"{self.name}: images must be [N, D, H, W, C] with N={n}, got {self.images.shape}")
            if self.images.shape[1] != len(self.domains):
                raise DataError(f"{self.name}: {self.images.shape[1]} image domains but {len(self.domains)} names")
        if self.texts is not None and len(self.texts) != n:
            raise DataError(f"{self.name}: {len(self.texts)} texts for {n} labels")
        if self.fixed_test is not None and len(self.fixed_test) != n:
            raise DataError(f"{self.name}: fixed_test mask has {len(self.fixed_test)} entries for {n} items")
        labels = np.asarray(self.labels)
        if self.task == "multiclass":
            if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= len(self.classes))):
                raise DataError(f"{self.name}: multiclass labels must be [N] ids in 0..{len(self.classes) - 1}")
        elif labels.ndim != 2 or labels.shape[1] != len(self.classes):
            raise DataError(f"{self.name}: multilabel labels must be [N, {len(self.classes)}], got {labels.shape}")
        elif np.isinf(labels.astype(np.float64)).any():  # NaN is allowed: "unknown" (ignored in loss and metrics)
            raise DataError(f"{self.name}: infinite multilabel labels")
        for attr, present in (("has_image", self.images is not None), ("has_text", self.texts is not None)):
            mask = getattr(self, attr)
            if mask is None:
                continue
            if not present:
                raise DataError(f"{self.name}: {attr} given but the bundle has no such modality")
            if len(mask) != n:
                raise DataError(f"{self.name}: {attr} has {len(mask)} entries for {n} items")
            setattr(self, attr, np.asarray(mask, dtype=bool))
        if self.clients is not None:
            if len(self.clients) != n:
                raise DataError(f"{self.name}: {len(self.clients)} client ids for {n} items")
            names = self.client_names or []
            if len(self.clients) and int(np.max(self.clients)) >= len(names):
                raise DataError(f"{self.name}: client ids go up to {int(np.max(self.clients))} "
                                 f"but only {len(names)} client names are given")

        if self.client_group is not None:
            if len(self.client_group) != n:
                raise DataError(f"{self.name}: client_group has {len(self.client_group)} entries for {n} items")
            bad = sorted(set(np.unique(self.client_group).tolist()) - set(CLIENT_GROUPS))
            if bad:
                raise DataError(f"{self.name}: client_group values {bad} are not among {', '.join(CLIENT_GROUPS)}")

    def image_mask(self) -> np.ndarray:
        """``[N]`` bool: items with a real image (all False for a text-only data set)."""
        if self.images is None:
            return np.zeros(len(self), bool)
        return np.ones(len(self), bool) if self.has_image is None else self.has_image

    def text_mask(self) -> np.ndarray:
        """``[N]`` bool: items with a real text (all False for an image-only data set)."""
        if self.texts is None:
            return np.zeros(len(self), bool)
        return np.ones(len(self), bool) if self.has_text is None else self.has_text

    @property
    def modalities(self) -> tuple[Modality, ...]:
        mods: list[Modality] = []
        if self.images is not None:
            mods.append("image")
        if self.texts is not None:
            mods.append("text")
        return tuple(mods)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def class_ids(self) -> np.ndarray:
        """One class id per item, for label-skew partitioning (first positive for multi-label)."""
        if self.task == "multiclass":
            return self.labels.astype(np.int64)
        lab = np.nan_to_num(np.asarray(self.labels, dtype=np.float32), nan=0.0)  # unknown = absent
        return np.where(lab.any(axis=1), lab.argmax(axis=1), lab.shape[1]).astype(np.int64)


class DatasetSource(ABC):
    """One data set: how to fetch it into the cache and how to load it from there.

    Subclasses set the class attributes and implement :meth:`fetch` and :meth:`load`.
    ``fetch`` is idempotent (a second call does nothing) and raises
    :class:`adamodal.errors.DataError` naming what to install when a download fails.
    """

    name: ClassVar[str]
    modalities: ClassVar[tuple[Modality, ...]]
    task: ClassVar[Task]
    description: ClassVar[str] = ""

    def __init__(self, options: dict[str, object] | None = None) -> None:
        #: dataset-specific options from the config (e.g. ``emoji.label``), keys without prefix
        self.options = dict(options or {})

    @abstractmethod
    def fetch(self, cache: Path) -> Path:
        """Download the raw files into ``cache`` (if not already there); return their folder."""

    @abstractmethod
    def load(self, cache: Path) -> Bundle:
        """Read the fetched files into a :class:`Bundle` (fetching first if needed)."""

    #: option name -> default, merged into the config as ``<dataset>.<option>``
    options_defaults: ClassVar[dict[str, object]] = {}
    #: True for data a site brings itself (its own folder, in the data set's layout): in a
    #: Flower deployment each site then loads only its own folder and the server only its test
    #: set (:mod:`adamodal.runtime.sites`). False for the built-in benchmark data sets, which
    #: every site derives its share of from the whole data set, as the simulator does.
    site_local: ClassVar[bool] = False
