"""Messages and evaluation reports as Flower records, and their size on the wire.

A :class:`~adamodal.methods.base.Message` becomes a RecordDict with one ArrayRecord
(``"arrays"``, the named numpy arrays, dtypes and shapes kept exactly) and one ConfigRecord
(``"scalars"``). The conversion is lossless, so a client under Flower computes with the same
bits it would get in process. Bytes are counted from the records themselves: the serialised
array buffers (numpy's ``.npy`` format, a ~128-byte header per array) plus the scalars as
JSON, i.e. what the method's payload costs on the wire, without Flower's fixed framing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from adamodal.errors import AdamodalError
from adamodal.methods.base import Message
from adamodal.metrics import STATS
from adamodal.runtime.clients import ClientEval

ARRAYS = "arrays"
SCALARS = "scalars"
#: the ConfigRecord that says what to do (phase, round, ...): control, not method payload
CONTROL = "control"


def to_records(msg: Message, control: dict[str, Any] | None = None) -> RecordDict:
    """A Message (plus optional control values) as a Flower RecordDict."""
    arrays = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in msg.arrays.items()})
    rd = RecordDict({ARRAYS: arrays, SCALARS: ConfigRecord(dict(msg.scalars))})
    if control:
        rd[CONTROL] = ConfigRecord(dict(control))
    return rd


def from_records(rd: RecordDict) -> Message:
    """Inverse of :func:`to_records`; a payload missing its records is a protocol error."""
    try:
        arrays = rd.array_records[ARRAYS]
        scalars = rd.config_records[SCALARS]
    except KeyError as exc:
        raise AdamodalError(f"malformed message: no {exc.args[0]!r} record") from None
    return Message({k: a.numpy() for k, a in arrays.items()}, dict(scalars))


def control_of(rd: RecordDict) -> dict[str, Any]:
    return dict(rd.config_records.get(CONTROL, {}))


def records_nbytes(rd: RecordDict) -> int:
    """Payload bytes of a converted Message: serialised arrays plus scalars as JSON (the same
    rule as :meth:`Message.nbytes`, applied to what Flower actually ships)."""
    total = 0
    if ARRAYS in rd.array_records:
        total += sum(len(a.data) for a in rd.array_records[ARRAYS].values())
    if SCALARS in rd.config_records:
        scalars = dict(rd.config_records[SCALARS])
        total += len(json.dumps(scalars, sort_keys=True).encode()) if scalars else 0
    return total


#: the key prefixes of an evaluation report: statistics of the client's own test split and of
#: its view of the server's test set (arrays), its own metrics and server-test metrics (scalars)
EVAL_STATS, EVAL_SERVER_STATS, EVAL_METRICS, EVAL_TEST = "stats.", "server_stats.", "metrics.", "test."


def _number(key: str, v: Any) -> int | float:
    return int(v) if key == "n" else float(v)


def eval_to_records(ev: ClientEval) -> RecordDict:
    """A client's evaluation report: its metrics and summed statistics (and server-test
    metrics), never a row's score or label."""
    arrays = {EVAL_STATS + k: v for k, v in ev.stats.items()}
    arrays.update({EVAL_SERVER_STATS + k: v for k, v in ev.server_stats.items()})
    scalars: dict[str, Any] = {"has_test_metrics": ev.test_metrics is not None}
    scalars.update({EVAL_METRICS + k: _number(k, v) for k, v in ev.metrics.items()})
    for cond, m in (ev.test_metrics or {}).items():
        scalars.update({f"{EVAL_TEST}{cond}.{k}": _number(k, v) for k, v in m.items()})
    return RecordDict({
        ARRAYS: ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()}),
        SCALARS: ConfigRecord(scalars),
    })


def eval_from_records(rd: RecordDict) -> ClientEval:
    """Inverse of :func:`eval_to_records`; a report that cannot be one is a protocol error."""
    try:
        return _eval_from_records(rd)
    except (ValueError, TypeError, AttributeError) as exc:
        raise AdamodalError(f"malformed evaluation report: {type(exc).__name__}: {exc}") from None


def _eval_from_records(rd: RecordDict) -> ClientEval:
    msg = from_records(rd)
    a, s = msg.arrays, dict(msg.scalars)
    stats = {k.removeprefix(EVAL_STATS): v for k, v in a.items() if k.startswith(EVAL_STATS)}
    server_stats = {k.removeprefix(EVAL_SERVER_STATS): v for k, v in a.items() if k.startswith(EVAL_SERVER_STATS)}
    metrics = {k.removeprefix(EVAL_METRICS): _number(k.removeprefix(EVAL_METRICS), v)
               for k, v in s.items() if k.startswith(EVAL_METRICS)}
    for name, part in (("stats", stats), ("server_stats", server_stats)):
        missing = [k for k in STATS if k not in part]
        if missing:
            raise AdamodalError(f"malformed evaluation report: {name} lacks {', '.join(missing)}")
    test_metrics: dict[str, dict[str, float]] | None = None
    if s.get("has_test_metrics", False):
        test_metrics = {}
        for key, v in s.items():
            if key.startswith(EVAL_TEST):
                cond, metric = key.removeprefix(EVAL_TEST).split(".", 1)
                test_metrics.setdefault(cond, {})[metric] = _number(metric, v)
    return ClientEval(metrics=metrics, stats=stats, server_stats=server_stats, test_metrics=test_metrics)
