"""Progress bars on a terminal, silence elsewhere (logs, pipes, CI)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap an iterable in a tqdm bar when stderr is a terminal."""
    return iter(tqdm(items, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False))
