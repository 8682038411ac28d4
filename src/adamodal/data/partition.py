"""Label-skew partitioners over identity groups, built on flwr-datasets' partitioners.

flwr-datasets already implements IID, Dirichlet and k-classes-per-client (pathological)
partitioning on in-memory data, so we partition *groups* (one row per identity group, labelled
by its class) with it and expand groups back to items. Partitioning groups, not items, keeps
every emoji's skin-tone variants or every patient's studies inside one client.

Two additions of our own:

- **The minimum-size rule.** Every client must hold at least :func:`min_partition_size` groups
  (enough to split into train/val/test). flwr-datasets' Dirichlet partitioner redraws up to 10
  times and then gives up, which at ``alpha`` 0.05-0.1 with 20 clients is the usual outcome.
  When it gives up we take the seed's first draw without a minimum and top up every short
  client from the largest one, one group at a time (:func:`enforce_min_size`): the client
  that is short takes the class it already holds most of (the donor's most common class as a
  tie-break), so the skew the draw made survives. Deterministic per seed; a draw that already
  meets the minimum is returned unchanged (so results of such configs did not move).
- **Label skew aligned with the modality groups** (``partition=aligned``): the classes are
  split into two halves (seeded); image-only clients draw mostly from one half, text-only
  clients mostly from the other, image+text clients from all, with a Dirichlet over clients
  inside each class. Classes the image-only clients rarely see are then exactly the ones the
  text-only clients hold, the setting where cross-modal knowledge transfer should pay.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from functools import cache as _memoize
from pathlib import Path

import numpy as np

from adamodal.cache import atomic_save_npz, content_hash
from adamodal.errors import DataError

#: the two modality-specific kinds of client ``partition=aligned`` pulls apart
IMAGE_KIND, TEXT_KIND = "image_only", "text_only"


def min_partition_size(num_groups: int, num_clients: int) -> int:
    """Fewest groups a Dirichlet-partitioned client gets: 10, relaxed for small pools (a
    quarter of the fair share) so that ``num_clients * minimum <= num_groups`` always holds."""
    return int(max(1, min(10, num_groups // (4 * max(num_clients, 1)))))


def partition_groups(
    group_labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    leak: float = 0.05,
    cache: Path | None = None,
) -> list[np.ndarray]:
    """Split ``len(group_labels)`` groups among ``num_clients``; returns group indices per client.

    ``kinds`` (``multimodal`` / ``image_only`` / ``text_only`` per client) and ``leak`` (a
    unimodal client's Dirichlet weight on the other half's classes, relative to its own half)
    are read by ``scheme="aligned"`` only.

    With ``cache`` (a cache root), a flwr-datasets partition is read back from
    ``cache/partitions/`` when the same labels were split the same way before: importing
    flwr-datasets alone costs seconds (it pulls in pandas, seaborn and SciPy), which a run's
    start-up need not pay again. The key covers the labels' content, every argument the
    scheme reads and the flwr-datasets version, so a cached split is the one a fresh call
    would return.
    """
    n = len(group_labels)
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} training items (identity groups) to share among them")
    labels = np.asarray(group_labels, dtype=np.int64)
    if scheme == "aligned":
        if kinds is None or len(kinds) != num_clients:
            raise DataError("partition=aligned needs the kind (image_only, text_only, ...) of every client")
        return aligned_partition(labels, list(kinds), alpha=alpha, leak=leak, seed=seed)
    if scheme not in ("iid", "dirichlet", "classes"):  # guarded by the config; kept for direct callers
        raise DataError(f"unknown partition scheme {scheme!r}")
    if cache is None:
        return _flwr_partition(labels, num_clients, scheme, alpha, classes_per_client, seed)
    path = partition_cache_path(Path(cache), labels, num_clients, scheme, alpha=alpha,
                                classes_per_client=classes_per_client, seed=seed)
    parts = _load_parts(path, num_clients, n)
    if parts is None:
        parts = _flwr_partition(labels, num_clients, scheme, alpha, classes_per_client, seed)
        try:
            _save_parts(path, parts)
        except OSError:
            pass  # a read-only or full cache only costs the next run the same work again
    return parts


def _flwr_partition(labels: np.ndarray, num_clients: int, scheme: str, alpha: float,
                    classes_per_client: int, seed: int) -> list[np.ndarray]:
    """IID, Dirichlet or k-classes-per-client over the groups, by flwr-datasets."""
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    n = len(labels)
    datasets.disable_progress_bars()
    # arrow format: the partitioners and _load_all read whole columns as arrow arrays, where
    # the default format walks them row by row in Python (4-10 s for 60,000 rows); same rows
    ds = datasets.Dataset.from_dict({"label": labels.tolist(), "gid": list(range(n))}).with_format("arrow")
    min_size = min_partition_size(n, num_clients)
    if scheme == "iid":
        part = IidPartitioner(num_partitions=num_clients)
    elif scheme == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=alpha,
            min_partition_size=min_size, self_balancing=False, shuffle=True, seed=seed,
        )
    else:
        num_labels = len(np.unique(labels))
        if classes_per_client > num_labels:
            raise DataError(f"partition.classes={classes_per_client} but the data has only {num_labels} classes")
        part = PathologicalPartitioner(
            num_partitions=num_clients, partition_by="label",
            num_classes_per_partition=classes_per_client, class_assignment_mode="deterministic",
            shuffle=True, seed=seed,
        )
    if scheme in ("iid", "classes"):
        # IidPartitioner and PathologicalPartitioner cut the rows (of each class) in order:
        # shuffle them first, seeded, or the seed would not change who holds which group
        ds = ds.select(np.random.default_rng(seed).permutation(n).tolist())
    part.dataset = ds
    try:
        return _load_all(part, num_clients)
    except ValueError as exc:
        if scheme != "dirichlet":
            raise DataError(f"partition={scheme} failed for {num_clients} clients over {n} groups: {exc}") from None
    # flwr-datasets' redraws all left a client short: its first draw (the same seed, no
    # minimum), then the minimum-size rule
    part = DirichletPartitioner(
        num_partitions=num_clients, partition_by="label", alpha=alpha,
        min_partition_size=0, self_balancing=False, shuffle=True, seed=seed,
    )
    part.dataset = ds
    return enforce_min_size(_load_all(part, num_clients), labels, min_size)


def _load_all(part, num_clients: int) -> list[np.ndarray]:
    """Every partition's group ids, flwr-datasets' resampling warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [np.asarray(part.load_partition(i)["gid"], dtype=np.int64) for i in range(num_clients)]


#: bump when the partitioning here changes, so a cached split made by older code is not reused
PARTITION_VERSION = "1"


@_memoize
def _library_versions() -> str:
    """The versions of the libraries that draw the split: a new release may draw another one."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("flwr-datasets", "datasets", "numpy"):
        try:
            found.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist}=?")
    return ",".join(found)


def partition_cache_path(cache: Path, labels: np.ndarray, num_clients: int, scheme: str, *,
                         alpha: float, classes_per_client: int, seed: int) -> Path:
    """Where the split of ``labels`` by ``scheme`` is cached: keyed by the labels' content and
    only the arguments the scheme reads (an IID split does not change with ``alpha``)."""
    reads = {"iid": (), "dirichlet": (("alpha", float(alpha)),),
             "classes": (("classes", int(classes_per_client)),)}[scheme]
    key = content_hash("partition", PARTITION_VERSION, _library_versions(), scheme, int(num_clients), int(seed),
                       repr(reads), np.asarray(labels, dtype=np.int64))
    return Path(cache) / "partitions" / f"{scheme}-{key}.npz"


def _save_parts(path: Path, parts: list[np.ndarray]) -> None:
    """Plain arrays only (read back with ``allow_pickle=False``): the parts end to end and
    where each starts."""
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    flat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    atomic_save_npz(path, groups=flat, offsets=offsets)


def _load_parts(path: Path, num_clients: int, n: int) -> list[np.ndarray] | None:
    """The cached split, or ``None`` (recompute) when absent, unreadable or inconsistent:
    a damaged file costs a recomputation, never a crash or a wrong split."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, offsets = np.asarray(z["groups"]), np.asarray(z["offsets"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (flat.dtype != np.int64 or offsets.dtype != np.int64 or flat.ndim != 1 or offsets.shape != (num_clients + 1,)
            or offsets[0] != 0 or offsets[-1] != len(flat) or (np.diff(offsets) < 0).any()):
        return None
    if len(flat) and (flat.min() < 0 or flat.max() >= n or len(np.unique(flat)) != len(flat)):
        return None
    return [flat[offsets[i]:offsets[i + 1]].copy() for i in range(num_clients)]


def enforce_min_size(
    parts: list[np.ndarray], labels: np.ndarray, min_size: int, affinity: np.ndarray | None = None
) -> list[np.ndarray]:
    """Top up every client holding fewer than ``min_size`` groups from the largest client.

    One group moves at a time to the lowest-numbered short client, from the largest client
    (the lowest index on a tie) among those above the minimum that hold a class of the
    receiver's highest ``affinity[receiver, class]`` (all equal when None: simply the
    largest client). The moved group's class is the receiver's preferred one: highest
    affinity, then the class the receiver already holds most of, then the donor's most common
    class; of that class the donor gives up its last group. Deterministic; never leaves the
    donor short.
    """
    num_clients = len(parts)
    if min_size * num_clients > len(labels):
        raise DataError(f"{num_clients} clients cannot each hold {min_size} of {len(labels)} groups")
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    held = [list(map(int, p)) for p in parts]
    counts = np.zeros((num_clients, num_classes), np.int64)
    for i, p in enumerate(held):
        np.add.at(counts[i], labels[p], 1)
    pref = np.ones((num_clients, num_classes)) if affinity is None else np.asarray(affinity, float)
    while True:
        sizes = counts.sum(1)
        short = np.flatnonzero(sizes < min_size)
        if len(short) == 0:
            break
        rcv = int(short[0])
        # the best class any client that can spare a group holds for this receiver ...
        spare = sizes > min_size
        best = pref[rcv][(counts[spare] > 0).any(0)].max()
        # ... from the largest such client
        able = spare & (counts[:, pref[rcv] == best] > 0).any(1)
        donor = int(np.argmax(np.where(able, sizes, -1)))
        present = np.flatnonzero(counts[donor] > 0)
        # lexsort: the last key is the primary one
        order = np.lexsort((counts[donor, present], counts[rcv, present], pref[rcv, present]))
        cls = int(present[order[-1]])
        pos = max(k for k, g in enumerate(held[donor]) if labels[g] == cls)
        held[rcv].append(held[donor].pop(pos))
        counts[donor, cls] -= 1
        counts[rcv, cls] += 1
    return [np.asarray(p, dtype=np.int64) for p in held]


def aligned_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The classes split into two seeded halves: (image-leaning, text-leaning); the first
    half takes the odd class when the count is odd."""
    classes = np.unique(labels)
    order = np.random.default_rng([seed, 17]).permutation(classes)
    cut = (len(classes) + 1) // 2
    return np.sort(order[:cut]), np.sort(order[cut:])


def aligned_affinity(labels: np.ndarray, kinds: list[str], leak: float, seed: int) -> np.ndarray:
    """``[clients, classes]`` weights: 1 on a client's own half (every class for image+text
    clients), ``leak`` on the other half."""
    num_classes = int(labels.max()) + 1
    img_half, txt_half = aligned_halves(labels, seed)
    aff = np.ones((len(kinds), num_classes))
    for i, kind in enumerate(kinds):
        if kind in (IMAGE_KIND, TEXT_KIND):
            aff[i] = leak
            aff[i, img_half if kind == IMAGE_KIND else txt_half] = 1.0
    return aff


def aligned_partition(labels: np.ndarray, kinds: list[str], *, alpha: float, leak: float,
                      seed: int) -> list[np.ndarray]:
    """``partition=aligned``: for each class, its groups are divided among the clients in
    proportion to a Dirichlet(``alpha``) draw over the clients times ``affinity[:, class]``
    (see :func:`aligned_affinity`), so a unimodal client's share of the other half's classes
    is its plain-Dirichlet share scaled down by ``leak``. (Lowering the Dirichlet parameter
    instead would make rare but large leaks: a tiny parameter gives mostly nothing and now
    and then a big chunk.) Then :func:`enforce_min_size` tops up short clients, again
    preferring the classes of their own half."""
    if not 0 <= leak <= 1:
        raise DataError(f"partition.leak={leak} must lie in [0, 1]")
    n, num_clients = len(labels), len(kinds)
    aff = aligned_affinity(labels, kinds, leak, seed)
    rng = np.random.default_rng([seed, 19])
    held: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        share = rng.dirichlet(np.full(num_clients, alpha)) * aff[:, cls]
        if not np.isfinite(share).all() or share.sum() <= 0:  # every weight drawn ~0: no skew
            share = aff[:, cls].copy()
        share /= share.sum()
        cuts = (np.cumsum(share) * len(idx)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(idx, cuts)):
            held[i].extend(chunk.tolist())
    parts = [np.asarray(p, dtype=np.int64) for p in held]
    return enforce_min_size(parts, labels, min_partition_size(n, num_clients), aff)
