"""Give the C heap's freed pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

A loop whose every step allocates and frees hundreds of MB (a transformer's activations on a batch of
varying length) leaves glibc's heap fragmented: the freed memory stays in the process's RSS and the next
step's peak stands on it, so the high-water mark creeps up with the number of steps.
"""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def trim() -> None:
    """``malloc_trim(0)``: return every free page of every arena (milliseconds for a heap of ~0.5 GB)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
