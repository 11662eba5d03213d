"""What keeps the agent's processes small: the modules every child uses, imported before the forkserver is forked
(one copy of their pages for the supervisor, the forkserver and every child), and the C heap's free pages handed
back to the kernel (a forked process otherwise keeps its own copy of pages that hold only freed memory)."""

from __future__ import annotations

import ctypes
import gc
import importlib

from actors.datasets import BUILT_DATASETS

# Not pydantic: the collectors run on options the command line checked (actors.datasets.CheckedOptions).
SHARED_MODULES = ("json", "sqlite3", "psutil", "pykka", "ctypes", "actors.runtime.agent",
                  "actors.runtime.collector", "actors.runtime.doorbell", "actors.runtime.producer",
                  "actors.runtime.worker", "actors.outputs.console", "actors.outputs.file", *BUILT_DATASETS.values())

_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; None elsewhere (musl)


def import_shared_modules() -> None:
    """Import SHARED_MODULES: in the supervisor before it forks the forkserver (the forkserver's preload then
    finds them loaded), or in a forkserver multiprocessing started its own way."""
    for module in SHARED_MODULES:
        importlib.import_module(module)


def trim_heap() -> None:
    """Return the C heap's free pages to the kernel (`malloc_trim(0)`; nothing without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def freeze_for_fork() -> None:
    """Before forking children that live as long as this process's objects: hand the free heap pages back, then
    move every object out of the collector's reach (`gc.freeze()`), so a child's full collection does not write
    to the header of every object it inherited (which copied about 9 MiB of shared pages into each child).

    Not collected first: the holes that would leave in shared pages are where a child's first allocations would
    go, copying those pages (0.3 MiB more per child)."""
    trim_heap()
    gc.freeze()
