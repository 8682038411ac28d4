"""Server-side checks of every client reply before anything is aggregated.

The server loop runs :func:`validate_replies` on each phase's replies, under the in-process
simulator and the Flower runtime alike, so a client that sends garbage (NaN/Inf, wrong names,
shapes or dtypes, an absurd norm, an oversized payload, an inflated sample count) is dropped
from the round with the reason, exactly like a client that crashed. Nothing it sent reaches
:meth:`~adamodal.methods.base.Method.aggregate`.

What a reply must look like comes from the method (:meth:`Method.reply_schema`): either an
exact schema, or ``None``, in which case it is derived without per-method code:

* an array named like an array the server sent in this phase (a model sent down and trained)
  must come back with the same shape and dtype;
* scalars may be NaN (an undefined metric) but not infinite; ``num_examples``, which weights
  the average, must be a finite number no larger than the client's declared training rows;
* an array the server did not send (summaries, warm-up weights) must have the dtype, the
  number of axes and the trailing dimensions most clients of the phase used for that name
  (the first axis is free: a client's number of centroids or rows may differ). Derived
  checks therefore assume an honest majority, which is the setting a consortium runs in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamodal.methods.base import ArraySpec, Message, Method

#: array kinds a payload may carry: bool, signed/unsigned int, float (no objects, strings)
NUMERIC_KINDS = "biuf"


@dataclass(frozen=True)
class Limits:
    """The bounds every reply is held to (0 switches a bound off)."""

    max_update_norm: float = 0.0
    max_payload_mb: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Limits:
        return cls(float(cfg.get("max_update_norm", 0.0)), float(cfg.get("max_payload_mb", 0.0)))


def update_norm(reply: Message, sent: Message) -> float:
    """L2 norm of what the client changed: ``reply - sent`` for arrays answering a sent array
    of the same shape, the array itself otherwise; floating arrays only (counts and flags are
    bounded by the schema, not by a norm)."""
    total = 0.0
    for key, a in reply.arrays.items():
        a = np.asarray(a)
        if a.dtype.kind != "f":
            continue
        ref = sent.arrays.get(key)
        # in float32 or wider (BLAS dot, no float64 copies of float32 models); a sum that
        # overflows is inf, i.e. far above any limit, which is the right verdict
        dt = np.promote_types(a.dtype, np.float32)
        a = a.astype(dt, copy=False)
        diff = a - np.asarray(ref, dtype=dt) if ref is not None and np.shape(ref) == a.shape else a
        flat = np.ravel(diff)
        with np.errstate(over="ignore", invalid="ignore"):
            total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def _structure_problem(reply: Any, limits: Limits) -> str | None:
    """Type, size, dtype kind and finiteness: checks that need no other reply."""
    if not isinstance(reply, Message) or not isinstance(reply.arrays, dict) or not isinstance(reply.scalars, dict):
        return f"invalid payload: expected a Message, got {type(reply).__name__}"
    for key, a in reply.arrays.items():
        if not isinstance(key, str):
            return f"invalid payload: array name {key!r} is not a string"
        if not isinstance(a, np.ndarray):
            return f"invalid payload: {key} is a {type(a).__name__}, not an array"
        if a.dtype.kind not in NUMERIC_KINDS:
            return f"invalid payload: {key} has dtype {a.dtype} (numbers only)"
    if limits.max_payload_mb > 0:
        mb = reply.nbytes() / 1e6
        if mb > limits.max_payload_mb:
            return f"payload too large: {mb:.1f} MB > max_payload_mb={limits.max_payload_mb:g}"
    for key, a in reply.arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"non-finite values in {key} ({int((~np.isfinite(a)).sum())} of {a.size})"
    for key, v in reply.scalars.items():
        if not isinstance(v, int | float | str | bool):
            return f"invalid payload: scalar {key} is a {type(v).__name__}"
        if isinstance(v, float) and np.isinf(v):
            # NaN is allowed: an honest client reports an undefined metric (a validation split
            # with one class has no AUC) as NaN; values that weight the average are checked below
            return f"infinite scalar {key}={v}"
    return None


def _schema_problem(reply: Message, schema: dict[str, ArraySpec]) -> str | None:
    missing = sorted(set(schema) - set(reply.arrays))
    extra = sorted(set(reply.arrays) - set(schema))
    if missing:
        return f"schema mismatch: missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    if extra:
        return f"schema mismatch: unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
    for key, spec in schema.items():
        a = reply.arrays[key]
        shape_ok = a.ndim == len(spec.shape) and all(s is None or s == d for s, d in zip(spec.shape, a.shape, strict=True))
        if not shape_ok:
            return f"schema mismatch: {key} has shape {tuple(a.shape)}, expected {spec.shape}"
        if a.dtype.name != spec.dtype:
            return f"schema mismatch: {key} has dtype {a.dtype.name}, expected {spec.dtype}"
    return None


def _signature(a: np.ndarray) -> tuple[str, int, tuple[int, ...]]:
    return a.dtype.name, a.ndim, tuple(a.shape[1:])


def _derived_problem(reply: Message, sent: Message, consensus: dict[str, tuple]) -> str | None:
    for key, a in reply.arrays.items():
        ref = sent.arrays.get(key)
        if ref is not None:
            ref = np.asarray(ref)
            if a.shape != ref.shape or a.dtype != ref.dtype:
                return (f"schema mismatch: {key} has shape {tuple(a.shape)} {a.dtype.name}, "
                        f"the server sent {tuple(ref.shape)} {ref.dtype.name}")
        elif key in consensus and _signature(a) != consensus[key]:
            dtype, ndim, rest = consensus[key]
            return (f"schema mismatch: {key} has shape {tuple(a.shape)} {a.dtype.name}, the other "
                    f"clients sent {ndim}-d {dtype} arrays of shape (*, {', '.join(map(str, rest))})")
    return None


def _count_problem(reply: Message, method: Method, cid: int) -> str | None:
    """``num_examples`` weights the average: a client may not claim more rows than it declared."""
    if "num_examples" not in reply.scalars:
        return None
    n = reply.scalars["num_examples"]
    info = method.clients.get(cid)
    if (isinstance(n, bool) or not isinstance(n, int | float) or not np.isfinite(n) or n < 0
            or (info is not None and n > info.num_train)):
        declared = info.num_train if info is not None else "?"
        return f"invalid num_examples={n!r} (client declared {declared} training rows)"
    return None


def validate_replies(method: Method, phase: str, rnd: int, sent: dict[int, Message],
                     replies: dict[int, Any], limits: Limits) -> tuple[dict[int, Message], dict[int, str]]:
    """Split one phase's replies into the valid ones and ``{cid: reason}`` for the rest."""
    problems: dict[int, str] = {}
    for cid, reply in replies.items():
        reason = "reply from a client that was not asked" if cid not in sent else _structure_problem(reply, limits)
        if reason:
            problems[cid] = reason
    sound = {cid: r for cid, r in sorted(replies.items()) if cid not in problems}
    # the most common signature of every array name the server did not send, over sound replies
    votes: dict[str, Counter] = {}
    for cid, r in sound.items():
        for key, a in r.arrays.items():
            if key not in sent.get(cid, Message()).arrays:
                votes.setdefault(key, Counter())[_signature(a)] += 1
    consensus = {key: c.most_common(1)[0][0] for key, c in votes.items()}
    for cid, reply in sound.items():
        msg = sent.get(cid, Message())
        schema = method.reply_schema(phase, rnd, cid, msg)
        reason = _schema_problem(reply, schema) if schema is not None else _derived_problem(reply, msg, consensus)
        reason = reason or _count_problem(reply, method, cid)
        if reason is None and limits.max_update_norm > 0 and not method.moves_raw_data:
            norm = update_norm(reply, msg)
            if norm > limits.max_update_norm:
                reason = f"update norm {norm:.3g} > max_update_norm={limits.max_update_norm:g}"
        if reason:
            problems[cid] = reason
    valid = {cid: r for cid, r in replies.items() if cid not in problems}
    return valid, problems


def check_incoming(msg: Any) -> None:
    """The client's side of the check: a message from the server must be well-formed and
    finite before the client trains on it (a corrupted broadcast fails that client's step,
    which the server then sees as a failure with this reason)."""
    from adamodal.errors import AdamodalError

    reason = _structure_problem(msg, Limits())
    if reason:
        raise AdamodalError(f"invalid message from the server: {reason}")
