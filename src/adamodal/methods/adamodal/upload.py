"""How a client's trained global parts travel up: float32, float16, or int8 deltas.

``int8`` sends what the client changed, not its weights: ``delta = trained - reference``,
where the reference is a model the server already holds (the global parts it sent for this
phase, or the seed's starting weights in round 1, which every machine rebuilds). Each row of a
delta is scaled to [-127, 127] and rounded stochastically (unbiased: the server's average of
many clients' deltas keeps no rounding bias), and goes up as ``q:<name>`` (int8) with
``s:<name>`` (one float32 scale per row). A delta is small next to the weights, so 8 bits lose
far less than they would on the weights themselves; the server decodes with the same
reference. Integer buffers go up unchanged.
"""

from __future__ import annotations

import numpy as np

QUANT, SCALE = "q:", "s:"


def encode(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The arrays as they go up under ``precision`` (``float32`` | ``float16`` | ``int8``)."""
    if precision == "float32":
        return arrays
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if not np.issubdtype(v.dtype, np.floating):
            out[k] = v
        elif precision == "float16":
            out[k] = v.astype(np.float16)
        else:
            q, scale = quantize(np.subtract(v, reference[k], dtype=np.float32), rng)
            out[QUANT + k], out[SCALE + k] = q, scale
    return out


def decode(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 parameters from what :func:`encode` produced (any precision)."""
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if k.startswith(SCALE):
            continue
        if k.startswith(QUANT):
            name = k[len(QUANT):]
            delta = dequantize(v, arrays[SCALE + name])
            out[name] = np.asarray(reference[name], np.float32) + delta  # 0-d stays an array
            out[name] = np.asarray(out[name], np.float32)
        else:
            out[k] = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
    return out


def deltas(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What each uploaded float parameter changed from ``reference``, float32 (any precision);
    integer buffers as they are (a count has no meaningful change to average).

    The server's weighted mean is then ``reference + sum_i w_i * delta_i``: under int8 the
    deltas are what travelled, so no client's weights are rebuilt to be averaged."""
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if k.startswith(SCALE):
            continue
        if k.startswith(QUANT):
            out[k[len(QUANT):]] = dequantize(v, arrays[SCALE + k[len(QUANT):]])
        elif np.issubdtype(v.dtype, np.floating):
            out[k] = np.subtract(v, reference[k], dtype=np.float32)
        else:
            out[k] = v
    return out


def quantize(delta: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scale per row): ``delta ~= codes * scale[row]``, rounded
    stochastically so the expectation is exact up to the dither's grain (1/65536 of a step:
    16-bit dither, drawn at half the cost of float32 uniforms; this runs on every upload)."""
    rows = delta.reshape(delta.shape[0], -1) if delta.ndim > 1 else delta.reshape(1, -1)
    scale = (np.abs(rows).max(axis=1) / np.float32(127.0)).astype(np.float32)
    scale[scale <= 0] = 1.0
    x = rows / scale[:, None]  # in [-127, 127], a fresh float32 array
    u = rng.integers(0, 1 << 16, x.shape, dtype=np.uint16).astype(np.float32)
    u *= np.float32(1.0 / (1 << 16))
    u += np.float32(0.5 / (1 << 16))  # uniform on (0, 1) at the grid's midpoints
    x += u
    codes = np.floor(x, out=x)  # floor(x + U): rounds up w.p. frac(x)
    return np.clip(codes, -127, 127, out=codes).astype(np.int8).reshape(delta.shape), scale


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows = codes.reshape(len(scale), -1).astype(np.float32) * scale[:, None]
    return rows.reshape(codes.shape)


def parameter_name(key: str) -> str:
    """The parameter an uploaded array belongs to (``q:``/``s:`` stripped)."""
    for prefix in (QUANT, SCALE):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
