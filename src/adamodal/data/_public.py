"""The server's public paired set (``split.public``): items no client holds.

Methods that draw on public data (retrieval imputation, CAR-MFL) need a small set of paired
image + text items with labels on the server. The scenario holds out a fraction
``split.public`` of the data set's identity groups from the clients' pool, the same way it
holds out ``split.global_test``, so no client ever trains, validates or is tested on them and
they are not in the server's test set either. With ``split.public = 0`` (the default) nothing
is held out and no random number is drawn, so every other scenario is unchanged.
"""

from __future__ import annotations

import numpy as np

from adamodal.data.base import Bundle
from adamodal.errors import ConfigError


def check_public(bundle: Bundle, fraction: float) -> None:
    """A public set needs paired data and clients the scenario forms itself."""
    if fraction <= 0:
        return
    if bundle.clients is not None:
        raise ConfigError(f"split.public={fraction:g}: dataset {bundle.name} defines its own clients (one "
                          "per site), so no public set can be held out of them; set split.public=0")
    if tuple(bundle.modalities) != ("image", "text"):
        raise ConfigError(
            f"split.public={fraction:g}: the public set pairs images with texts, and dataset "
            f"{bundle.name} has only {'/'.join(bundle.modalities)}; set split.public=0")


def hold_out_public(bundle: Bundle, pool_groups: np.ndarray, all_groups: int, fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(public_groups, remaining_pool_groups)``: ``fraction`` of all ``all_groups`` identity
    groups, drawn from the pool with a random stream of their own."""
    if fraction <= 0:
        return np.zeros(0, pool_groups.dtype), pool_groups
    check_public(bundle, fraction)
    n = int(round(fraction * all_groups))
    if n < 1:
        raise ConfigError(f"split.public={fraction:g} of {all_groups} identity groups holds out no item; "
                          "raise it or set split.public=0")
    if n >= len(pool_groups):
        raise ConfigError(f"split.public={fraction:g} ({n} identity groups) leaves no items for the "
                          f"clients ({len(pool_groups)} groups after split.global_test)")
    perm = np.random.default_rng([seed, 19]).permutation(pool_groups)
    return np.sort(perm[:n]), np.sort(perm[n:])


def public_rows(bundle: Bundle, items: np.ndarray, domains: list[int]) -> tuple[np.ndarray, ...]:
    """Rows of the public set: every (item, image domain) pair of the items that have both an
    image and a text, over ``domains`` (the ones clients may see), as the arrays of a
    :class:`~adamodal.data.scenario.View` (``idx, dom, has_img, has_txt``)."""
    items = items[bundle.image_mask()[items] & bundle.text_mask()[items]]
    if len(items) == 0:
        raise ConfigError("split.public: the held-out identity groups have no item with both an image "
                          "and a text; raise split.public")
    doms = np.asarray(domains, dtype=np.int64)
    ones = np.ones(len(items) * len(doms), bool)
    return np.repeat(items, len(doms)), np.tile(doms, len(items)), ones, ones.copy()
