"""The environment PyTorch reads when it starts, set before its first import: every entry script imports this
module first (`import env`, before anything that imports torch).

THP_MEM_ALLOC_ENABLE=1: PyTorch's CPU allocator backs large blocks with transparent huge pages, which removes most
of the page-fault time of a CPU run's large activations (docs/benchmarks.md). PyTorch reads it at its first CPU
allocation; a value already set (THP_MEM_ALLOC_ENABLE=0 to compare) is kept.

glibc's malloc: PyTorch's CPU allocator does not cache freed blocks, and glibc hands every block above its mmap
threshold back to the kernel when freed, so each of a step's activations (tens to hundreds of MB) is faulted in
and zeroed by the kernel again at every allocation. keep_freed_memory() makes glibc serve them from its heap and
keep freed memory there for the next step (docs/benchmarks.md: the DM step and the evaluation epoch; the results
are the same bit for bit). The price: a process keeps its peak heap until it exits, and the heap fragments (a
larger peak resident size). ENV_MALLOC=default leaves glibc as it is.
"""
import ctypes
import ctypes.util
import os

os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def keep_freed_memory():
    """Large blocks from glibc's heap instead of fresh mappings, and freed memory kept for reuse; False where the
    C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


if os.environ.get('ENV_MALLOC', 'keep') != 'default':
    keep_freed_memory()
