"""Process settings that zonotope passes need to run at speed, applied once when verification
starts. Neither changes any result.

* BLAS on one thread inside a pass: the matrices are small and the batch API already runs one
  pass per core, so BLAS's own threads only contend (measured 10x slower).
* malloc keeps freed memory: a pass allocates and frees arrays of a few MB; glibc otherwise
  returns each to the OS and the next pass page-faults it back in (measured on CNN-MNIST:
  the fully connected layer 2.25 ms -> 0.45 ms, a whole pass 7.9 ms -> 5.7 ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from contextlib import AbstractContextManager

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _controller():
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the Numba kernels call)
    from threadpoolctl import ThreadpoolController

    _keep_freed_memory()
    return ThreadpoolController()


def _keep_freed_memory() -> None:
    """Raise glibc's mmap and trim thresholds (no-op where malloc is not glibc's)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    mallopt(_M_TOP_PAD, 64 << 20)


def single_threaded() -> AbstractContextManager:
    """A context in which every loaded BLAS library uses one thread (nothing to change, and
    nothing to restore, when they all do already: asking costs a microsecond, limiting 7)."""
    ctl = _controller()
    if all(lib.num_threads == 1 for lib in ctl.lib_controllers if lib.user_api == "blas"):
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")
