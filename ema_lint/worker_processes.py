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
such a file cost its own result, in a pool or in the caller's process. A very large file can
take minutes and gigabytes (the syntax tree costs several hundred bytes per source byte): it
runs alone too, in a child held to `AloneLimits`, so that it costs at most those.
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
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
# how soon a worker notices that the run that started it is gone, where it must poll
ORPHAN_CHECK_SECONDS = 0.5


class LimitReached(str):
    """How an item run alone died when it was stopped for going over `AloneLimits`."""


@dataclass(frozen=True)
class AloneLimits:
    """What one item run alone may cost: wall-clock seconds, and address space beyond what
    the child maps at its start, so that a file whose tree would not fit fails its own
    allocation instead of the machine's."""

    seconds: float = 120.0
    memory_bytes: int = 4 * 2**30


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
    run_alone: Callable[[Item], bool],
    setup: Callable[..., None] | None = None,
    setup_args: tuple = (),
    size: Callable[[Item], int] = lambda item: 0,
    limits: AloneLimits = AloneLimits(),
) -> Iterator[tuple[Item, Any]]:
    """`(item, function(item))` for every item, in the order they finish. `function` and `setup`
    must be importable by name (a worker may be a fresh interpreter). An item whose worker dies
    gets `died(item, how_it_died)` instead. The items `run_alone` flags (those that may crash
    or blow up) run alone in a child held to `limits`, in a pool and in the caller's own
    process (`jobs` 1, or too few items for a pool) alike."""
    if jobs <= 1 or len(items) < 2 * jobs:
        if setup is not None:
            setup(*setup_args)
        for item in items:
            if run_alone(item):
                yield item, _alone(function, item, context, died, setup, setup_args, limits)
            else:
                yield item, function(item)
        return
    # a file that may crash the parser would break the pool and send every unfinished one
    # to a process of its own: it runs alone from the start
    alone = [i for i, item in enumerate(items) if run_alone(item)]
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
                yield item, _alone(function, item, context, died, setup, setup_args, limits)
    for index in alone:
        yield items[index], _alone(function, items[index], context, died, setup, setup_args, limits)


def _alone(function, item, context: BaseContext, died, setup, setup_args, limits: AloneLimits) -> Any:
    try:
        pool = context.Pool(
            1, initializer=_start_worker, initargs=(os.getpid(), setup, setup_args, limits.memory_bytes)
        )
    except Exception as error:  # noqa: BLE001 - a fresh worker is sent its setup pickled (a caller's lambda)
        return died(item, f"could not start: {type(error).__name__}: {error}")
    with pool:
        pending = pool.apply_async(function, (item,))
        processes = list(pool._pool)
        deadline = time.monotonic() + limits.seconds
        while True:
            try:
                return pending.get(timeout=0.2)
            except multiprocessing.TimeoutError:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead and dead[0].exitcode == -signal.SIGABRT and sys.platform.startswith("linux"):
                    # a native allocation that fails under the address-space limit (set where
                    # /proc is) aborts
                    return died(item, LimitReached(f"over the {limits.memory_bytes / 2**30:.3g} GiB limit for one file"))
                if dead:
                    return died(item, _cause(dead[0].exitcode))
                if time.monotonic() > deadline:
                    # leaving the `with` terminates the child
                    return died(item, LimitReached(f"over the {limits.seconds:g} s limit for one file"))
            except Exception as error:  # noqa: BLE001 - the work could not be sent (a caller's lambda)
                return died(item, f"could not start: {type(error).__name__}: {error}")


def _start_worker(
    caller: int, setup: Callable[..., None] | None, setup_args: tuple, memory_bytes: int | None = None
) -> None:
    # a worker whose run was killed (SIGKILL leaves no chance to stop the pool) would run on
    # as an orphan. Linux's parent-death signal fires when the *thread* that started the
    # worker ends (the pool's own threads do), and a forkserver worker's parent is the
    # forkserver, which outlives the run: the worker watches the calling process instead.
    threading.Thread(target=_exit_with, args=(caller,), daemon=True).start()
    if memory_bytes is not None:
        _limit_address_space(memory_bytes)
    if setup is not None:
        setup(*setup_args)


def _limit_address_space(memory_bytes: int) -> None:
    """Allow `memory_bytes` more address space than the child already maps (a forked child
    shares its parent's mappings, which may be large: an accelerator runtime reserves
    gigabytes it never touches)."""
    try:
        import resource

        with open("/proc/self/statm") as handle:
            mapped = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):  # not Linux: the time limit still holds
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + memory_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


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
