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


def eval_to_records(ev: ClientEval) -> RecordDict:
    """A client's evaluation report: its scores and labels (and server-test metrics)."""
    arrays = {"scores": ev.scores, "y": ev.y, "server_scores": ev.server_scores, "server_y": ev.server_y}
    metrics: dict[str, Any] = {}
    for cond, m in (ev.test_metrics or {}).items():
        metrics.update({f"{cond}.{k}": float(v) for k, v in m.items()})
    return RecordDict({
        ARRAYS: ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()}),
        SCALARS: ConfigRecord({"has_test_metrics": ev.test_metrics is not None, **metrics}),
    })


def eval_from_records(rd: RecordDict) -> ClientEval:
    msg = from_records(rd)
    a, s = msg.arrays, dict(msg.scalars)
    test_metrics = None
    if s.pop("has_test_metrics", False):
        test_metrics = {}
        for key, v in s.items():
            cond, metric = key.split(".", 1)
            test_metrics.setdefault(cond, {})[metric] = float(v)
    return ClientEval(scores=a["scores"], y=a["y"], server_scores=a["server_scores"],
                      server_y=a["server_y"], test_metrics=test_metrics)
