"""The environment PyTorch reads when it starts, set before its first import: every entry script imports this
module first (`import env`, before anything that imports torch).

THP_MEM_ALLOC_ENABLE=1: PyTorch's CPU allocator backs large blocks with transparent huge pages, which removes most
of the page-fault time of a CPU run's large activations (docs/benchmarks.md). PyTorch reads it at its first CPU
allocation; a value already set (THP_MEM_ALLOC_ENABLE=0 to compare) is kept.
"""
import os

os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
