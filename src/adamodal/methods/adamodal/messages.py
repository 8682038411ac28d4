"""Every array name AdaModal-Fed puts on the wire, in one place.

``g.<param>``: a global parameter sent down; ``k.<name>``: the server's knowledge (``C_img``,
``C_txt``, ``pi``, ``Z_img``, ``Z_txt``, ``mean_img``, ``mean_txt``, and under ``replay`` the
class prototypes ``P_img``, ``P_txt`` with their row counts ``Pn_img``, ``Pn_txt``); ``t<i>.<param>``: teacher
i's parameters relayed for distillation, with ``t<i>.__modalities``; summaries go up as
``c_<m>`` (centroids), ``n_<m>`` (counts), ``h_<m>`` (label histograms).
"""

from __future__ import annotations

import numpy as np

from adamodal.methods.base import Message

GLOBAL, KNOWLEDGE = "g.", "k."
SUMMARY_PREFIXES = ("c_", "n_", "h_")
TEACHER_MODALITIES = "__modalities"


def pack(global_params: dict[str, np.ndarray], knowledge: dict[str, np.ndarray] | None = None,
         scalars: dict | None = None) -> Message:
    arrays = {GLOBAL + k: v for k, v in global_params.items()}
    arrays.update({KNOWLEDGE + k: v for k, v in (knowledge or {}).items()})
    return Message(arrays, dict(scalars or {}))


def unpack(msg: Message) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(global parameters, knowledge) of a message made by :func:`pack`."""
    glob = {k[len(GLOBAL):]: v for k, v in msg.arrays.items() if k.startswith(GLOBAL)}
    know = {k[len(KNOWLEDGE):]: v for k, v in msg.arrays.items() if k.startswith(KNOWLEDGE)}
    return glob, know


def pack_teachers(packages: list[tuple[dict[str, np.ndarray], tuple[str, ...]]]) -> Message:
    """Teachers' parameters, each with the modalities it saw."""
    arrays: dict[str, np.ndarray] = {}
    for i, (params, mods) in enumerate(packages):
        arrays.update({f"t{i}.{k}": v for k, v in params.items()})
        arrays[f"t{i}.{TEACHER_MODALITIES}"] = np.array(["image" in mods, "text" in mods])
    return Message(arrays, {"teachers": len(packages)})


def unpack_teachers(msg: Message) -> list[tuple[dict[str, np.ndarray], bool, bool]]:
    """(parameters, sees images, sees texts) of every relayed teacher."""
    out = []
    for i in range(int(msg.scalars.get("teachers", 0))):
        prefix = f"t{i}."
        arrays = {k[len(prefix):]: v for k, v in msg.arrays.items() if k.startswith(prefix)}
        has = arrays.pop(TEACHER_MODALITIES)
        out.append((arrays, bool(has[0]), bool(has[1])))
    return out


def is_summary(key: str) -> bool:
    return key.startswith(SUMMARY_PREFIXES)
