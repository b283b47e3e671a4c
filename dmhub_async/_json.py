"""JSON on the hot path: orjson when it can, the standard library when it cannot.

Decoding is most of the cost of reading a page (benchmarks/bench_converter.py): orjson does it
in about half the time of ``json.loads``. It refuses what the standard library still reads
(integers beyond 64 bits, NaN), so those bodies fall back rather than fail.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps_line", "loads"]


def loads(body: bytes | str) -> Any:
    """Decode a JSON body; ValueError when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)  # raises ValueError (UnicodeDecodeError too) when not JSON


def dumps_line(obj: Any) -> bytes:
    """``obj`` as one UTF-8 JSON line, non-ASCII as is, ending in a newline."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # an integer beyond 64 bits, say
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
