"""The window-state changelog format: one msgpack map per stream, float64 radii exact."""

from __future__ import annotations

import msgpack

from worker.validate import WindowState

STATE_VERSION = 1


def encode_window(state: WindowState) -> bytes:
    """{"v": 1, "radii": [float64...], "count": int, "last_offset": int, "pvalue": float|nil}."""
    return msgpack.packb(
        {
            "v": STATE_VERSION,
            "radii": [float(r) for r in state.radii],
            "count": int(state.count),
            "last_offset": int(state.last_offset),
            "pvalue": None if state.pvalue is None else float(state.pvalue),
        },
        use_bin_type=True,
    )


def decode_window(data: bytes) -> WindowState:
    """Inverse of encode_window; ValueError naming what is wrong on anything else."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"window state is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict) or obj.get("v") != STATE_VERSION:
        raise ValueError(f"window state must be a map with v={STATE_VERSION}")
    radii, count, last = obj.get("radii"), obj.get("count"), obj.get("last_offset")
    pvalue = obj.get("pvalue")
    if not isinstance(radii, list) or not all(type(r) is float for r in radii):
        raise ValueError("window state 'radii' must be an array of floats")
    if type(count) is not int or type(last) is not int:
        raise ValueError("window state 'count' and 'last_offset' must be integers")
    if pvalue is not None and type(pvalue) is not float:
        raise ValueError("window state 'pvalue' must be a float or nil")
    return WindowState(tuple(radii), count, last, pvalue)
