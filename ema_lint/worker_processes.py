"""How `check` and `fix` start their worker processes.

`fork` is the cheap way (a worker inherits the imported rules and the project index and starts
in milliseconds), but it is only safe in a process that runs one thread: a lock another thread
holds at the fork (the import lock, a logging handler's, a native library's) stays held forever
in the child, which then hangs on its first import. The command line runs one thread; a test
runner, a language server or a notebook that imported torch usually does not, so there the
workers come from a fresh `forkserver` (or `spawn` where there is none), which is slower to start
and always safe. As with any `forkserver` or `spawn` pool, a script that calls the API there
re-runs in each worker unless its entry point sits under `if __name__ == "__main__":`.

A worker can die of one file: libcst's native parser overflows the stack on a statement that
nests a few thousand levels and takes the process down with a segfault. `map_isolated` makes
such a file cost its own result, in a pool or in the caller's process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any, Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
# how soon a worker notices that the run that started it is gone, where it must poll
ORPHAN_CHECK_SECONDS = 0.5


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


def map_isolated(
    function: Callable[[Item], Any],
    items: Sequence[Item],
    *,
    jobs: int,
    context: BaseContext,
    died: Callable[[Item, str], Any],
    may_crash: Callable[[Item], bool],
    setup: Callable[..., None] | None = None,
    setup_args: tuple = (),
    size: Callable[[Item], int] = lambda item: 0,
) -> Iterator[tuple[Item, Any]]:
    """`(item, function(item))` for every item, in the order they finish. `function` and `setup`
    must be importable by name (a worker may be a fresh interpreter). An item whose worker dies
    gets `died(item, how_it_died)` instead; in the caller's own process (`jobs` 1, or too few items
    for a pool) the items `may_crash` flags run alone in a child, since a crash there would end
    the run."""
    if jobs <= 1 or len(items) < 2 * jobs:
        if setup is not None:
            setup(*setup_args)
        for item in items:
            if may_crash(item):
                yield item, _alone(function, item, context, died, setup, setup_args)
            else:
                yield item, function(item)
        return
    # a file that may crash the parser would break the pool and send every unfinished one
    # to a process of its own: it runs alone from the start
    alone = [i for i, item in enumerate(items) if may_crash(item)]
    finished: set[int] = set(alone)
    try:
        with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_start_worker, initargs=(os.getpid(), setup, setup_args)
        ) as pool:
            # largest first: a long item started last would leave the other workers idle
            order = sorted((i for i in range(len(items)) if i not in finished), key=lambda i: size(items[i]), reverse=True)
            futures = {pool.submit(function, items[i]): i for i in order}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                result = future.result()
                finished.add(index)
                yield items[index], result
    except concurrent.futures.process.BrokenProcessPool:
        # which item killed the pool is unknown: each unfinished one runs alone
        for index, item in enumerate(items):
            if index not in finished:
                yield item, _alone(function, item, context, died, setup, setup_args)
    for index in alone:
        yield items[index], _alone(function, items[index], context, died, setup, setup_args)


def _alone(function, item, context: BaseContext, died, setup, setup_args) -> Any:
    try:
        pool = context.Pool(1, initializer=_start_worker, initargs=(os.getpid(), setup, setup_args))
    except Exception as error:  # noqa: BLE001 - a fresh worker is sent its setup pickled (a caller's lambda)
        return died(item, f"could not start: {type(error).__name__}: {error}")
    with pool:
        pending = pool.apply_async(function, (item,))
        processes = list(pool._pool)
        while True:
            try:
                return pending.get(timeout=0.2)
            except multiprocessing.TimeoutError:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    return died(item, _cause(dead[0].exitcode))
            except Exception as error:  # noqa: BLE001 - the work could not be sent (a caller's lambda)
                return died(item, f"could not start: {type(error).__name__}: {error}")


def _start_worker(caller: int, setup: Callable[..., None] | None, setup_args: tuple) -> None:
    # a worker whose run was killed (SIGKILL leaves no chance to stop the pool) would run on
    # as an orphan. Linux's parent-death signal fires when the *thread* that started the
    # worker ends (the pool's own threads do), and a forkserver worker's parent is the
    # forkserver, which outlives the run: the worker watches the calling process instead.
    threading.Thread(target=_exit_with, args=(caller,), daemon=True).start()
    if setup is not None:
        setup(*setup_args)


def _exit_with(caller: int) -> None:
    try:
        # readable once the process has ended, reaped or not
        handle = os.pidfd_open(caller)
    except (AttributeError, OSError):
        while _exists(caller):
            time.sleep(ORPHAN_CHECK_SECONDS)
    else:
        select.select([handle], [], [])
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cause(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
