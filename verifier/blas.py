"""Keep BLAS on one thread inside zonotope passes: the matrices are small and the batch API
already runs one pass per core, so BLAS's own threads would only contend (10x slower)."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager


@functools.lru_cache(maxsize=1)
def _controller():
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the Numba kernels call)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded() -> AbstractContextManager:
    """A context in which every loaded BLAS library uses one thread."""
    return _controller().limit(limits=1, user_api="blas")
