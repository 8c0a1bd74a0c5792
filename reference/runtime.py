"""How a helper process runs: which event loop, and a smaller heap once it has started.

    loop_factory = event_loop_factory("auto")      # before importing asyncio-heavy modules
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())                          # main() calls settle_memory() once started
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

__all__ = ["EVENT_LOOPS", "GC_THRESHOLD", "event_loop_factory", "settle_memory"]

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def event_loop_factory(choice: str = "auto") -> Callable[[], AbstractEventLoop] | None:
    """A loop factory for asyncio.Runner: uvloop's, or None for asyncio's own.

    "auto" takes uvloop where it is installed. Every request through a proxy costs a few socket
    events and task steps; uvloop runs that loop in C (on libuv) instead of Python, so a proxy
    spends less CPU per request. It also loads OpenSSL and libuv, so it takes more resident
    memory, and "asyncio" is there for where memory counts more. The lab's data-path scenario
    (`make bench`) measures both sides: the sidecar on each loop, its throughput, latency and
    idle memory.
    """
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None  # no wheel for this platform (Windows, PyPy): asyncio's loop does the job
    return uvloop.new_event_loop


# Container allocations between two young-generation collections (CPython's default: 700).
GC_THRESHOLD = 10_000


def settle_memory() -> None:
    """Once started: keep start-up objects out of garbage collection, give freed heap back.

    Also collects the young generation less often. A proxied request allocates a few hundred
    short-lived containers, nearly all freed by reference counting at once, so with the default
    threshold a collection ran every couple of requests and found next to nothing to free.
    Collecting every GC_THRESHOLD allocations instead bounds what can wait for a collection
    to that many objects.
    """
    # Imports leave a few hundred thousand objects that live as long as the process. Freezing
    # them spares every later full collection from walking them again.
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)
    # Start-up also freed a lot (parsing, compiling regexes, building tables). glibc keeps freed
    # memory mapped for reuse; malloc_trim hands the free pages back, about 1 MB of RSS here.
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter is linked with
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)
