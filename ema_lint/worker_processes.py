"""How `check` and `fix` start their worker processes.

`fork` is the cheap way (a worker inherits the imported rules and the project index and starts
in milliseconds), but it is only safe in a process that runs one thread: a lock another thread
holds at the fork (the import lock, a logging handler's, a native library's) stays held forever
in the child, which then hangs on its first import. The command line runs one thread; a test
runner, a language server or a notebook that imported torch usually does not, so there the
workers come from a fresh `forkserver` (or `spawn` where there is none), which is slower to start
and always safe. As with any `forkserver` or `spawn` pool, a script that calls the API there
re-runs in each worker unless its entry point sits under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from multiprocessing.context import BaseContext


def worker_context() -> BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and "fork" in methods and _runs_one_thread():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _runs_one_thread() -> bool:
    # native threads (OpenMP, gloo, an event loop's executor) count too; Python's own
    # bookkeeping sees only the threads it started
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1
