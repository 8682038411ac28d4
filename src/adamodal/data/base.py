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
    client_group: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.groups) != n:
            raise ValueError(f"{self.name}: {len(self.groups)} groups for {n} labels")
        if self.images is not None:
            if self.images.ndim != 5 or self.images.shape[0] != n:
                raise ValueError(f"{self.name}: images must be [N, D, H, W, C] with N={n}, got {self.images.shape}")
            if self.images.shape[1] != len(self.domains):
                raise ValueError(f"{self.name}: {self.images.shape[1]} image domains but {len(self.domains)} names")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"{self.name}: {len(self.texts)} texts for {n} labels")
        if self.fixed_test is not None and len(self.fixed_test) != n:
            raise ValueError(f"{self.name}: fixed_test mask has {len(self.fixed_test)} entries for {n} items")
        if self.client_group is not None:
            if len(self.client_group) != n:
                raise ValueError(f"{self.name}: client_group has {len(self.client_group)} entries for {n} items")
            bad = sorted(set(np.unique(self.client_group).tolist()) - set(CLIENT_GROUPS))
            if bad:
                raise ValueError(f"{self.name}: client_group values {bad} are not among {', '.join(CLIENT_GROUPS)}")

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
        lab = np.asarray(self.labels)
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
