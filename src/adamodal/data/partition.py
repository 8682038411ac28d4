"""Label-skew partitioners over identity groups, built on flwr-datasets' partitioners.

flwr-datasets already implements IID, Dirichlet and k-classes-per-client (pathological)
partitioning on in-memory data, so we partition *groups* (one row per identity group, labelled
by its class) with it and expand groups back to items. Partitioning groups, not items, keeps
every emoji's skin-tone variants or every patient's studies inside one client.
"""

from __future__ import annotations

import warnings

import numpy as np

from adamodal.errors import DataError


def partition_groups(
    group_labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split ``len(group_labels)`` groups among ``num_clients``; returns group indices per client."""
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    n = len(group_labels)
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} training items (identity groups) to share among them")
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"label": [int(x) for x in group_labels], "gid": list(range(n))})
    if scheme == "iid":
        part = IidPartitioner(num_partitions=num_clients)
    elif scheme == "dirichlet":
        # A client must get at least a few groups to split into train/val/test; small pools
        # relax the minimum rather than failing after flwr-datasets' 10 resampling attempts.
        min_size = int(max(1, min(10, n // (4 * num_clients))))
        part = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=alpha,
            min_partition_size=min_size, self_balancing=False, shuffle=True, seed=seed,
        )
    elif scheme == "classes":
        num_labels = len(np.unique(group_labels))
        if classes_per_client > num_labels:
            raise DataError(f"partition.classes={classes_per_client} but the data has only {num_labels} classes")
        part = PathologicalPartitioner(
            num_partitions=num_clients, partition_by="label",
            num_classes_per_partition=classes_per_client, class_assignment_mode="deterministic",
            shuffle=True, seed=seed,
        )
    else:  # guarded by the config; kept for direct callers
        raise DataError(f"unknown partition scheme {scheme!r}")
    if scheme in ("iid", "classes"):
        # IidPartitioner and PathologicalPartitioner cut the rows (of each class) in order:
        # shuffle them first, seeded, or the seed would not change who holds which group
        ds = ds.select(np.random.default_rng(seed).permutation(n).tolist())
    part.dataset = ds
    out: list[np.ndarray] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for i in range(num_clients):
                out.append(np.asarray(part.load_partition(i)["gid"], dtype=np.int64))
        except ValueError as exc:
            raise DataError(f"partition={scheme} failed for {num_clients} clients over {n} groups: {exc}") from None
    return out
