"""Dead-letter records: the input's value byte for byte, and headers saying why and whence."""

from __future__ import annotations


def dead_letter_headers(
    error: str, topic: str, partition: int, offset: int, dropped_bytes: int | None = None
) -> list[tuple[str, bytes]]:
    """`error` (one line), `source` (topic/partition/offset) and, when the value was too large
    to copy, `value-dropped` (its size)."""
    headers = [("error", error.encode()), ("source", f"{topic}/{partition}/{offset}".encode())]
    if dropped_bytes is not None:
        headers.append(("value-dropped", f"{dropped_bytes} bytes".encode()))
    return headers
