"""Memory of training on the CPU: freed tensors kept for reuse instead of given back to the system.

torch allocates CPU tensors with the C library's malloc. glibc serves every block of 32 MiB or
more (and smaller ones past its adaptive threshold) with a fresh ``mmap`` and returns it with
``munmap`` when the tensor is freed, and gives the top of its heap back once more than its trim
threshold is free. A training step allocates and frees the same large activations every
iteration, so each step faults all of them in again, page by page, each page zeroed by the kernel;
a distillation step, which runs the teacher while the student's activations are alive, took more
such faults than its three parts measured alone, and cost more than they did
(``tools/benchmark_distill.py --default-malloc``; the numbers: docs/BENCHMARKS.md).

:func:`keep_freed_memory` tells glibc to serve every block from its heap (``M_MMAP_MAX`` 0) and
never to trim it (``M_TRIM_THRESHOLD`` -1), so the memory of one step is reused by the next with
no page fault. The process then keeps the memory of its largest step until it ends, which a
training process needs every step anyway (the resident set of a detection demo process stayed
flat over 16 trainings). It changes no number, only where memory comes from.
"""
import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory", "freed_memory_is_kept"]

logger = logging.getLogger(__name__)

# mallopt parameters of glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_kept = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring); once per
    process, later calls return the first answer. True when it was applied, False where the C
    library is not glibc (nothing changes then)."""
    global _kept
    if _kept is not None:
        return _kept
    _kept = False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):
        logger.info("The C library is not glibc: freed CPU memory is managed as it decides")
        return _kept
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    version.restype = ctypes.c_char_p
    logger.info(f"glibc {version().decode()} malloc keeps freed memory for reuse "
                f"(M_MMAP_MAX 0, M_TRIM_THRESHOLD -1): no page faults on the next step's "
                f"tensors" if _kept else "glibc's mallopt refused; freed memory is managed as usual")
    return _kept


def freed_memory_is_kept() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return bool(_kept)
