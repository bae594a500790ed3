"""When is a module's forward a checkpoint recomputation rather than the real forward?

torch has no public "recomputing" flag, so two kinds of signal are combined:

- explicit: `recomputing()` is entered by the second context manager of a non-reentrant
  `checkpoint(..., context_fn=...)` or by `recompute_aware` on a reentrant call site;
- ambient: a forward that runs while the autograd engine executes a graph task is a forward
  inside backward, which is what every checkpoint flavour (reentrant, non-reentrant,
  `checkpoint_sequential`, DeepSpeed, checkpoint wrappers) does when it recomputes. It is
  the same test `torch.utils.module_tracker.ModuleTracker.is_bw` relies on; a test pins the
  private call so a torch upgrade that removes it fails loudly.

Under `torch.compile` both are ignored: the compiled backward recomputes inside the graph
without calling module forwards, and buffer mutations are applied once by the forward graph.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
from torch.nn.modules import module as _module

_state = threading.local()


def _explicit_depth() -> int:
    return getattr(_state, "depth", 0)


def forward_inside_backward() -> bool:
    """True while the autograd engine is executing a graph task on this thread."""
    return torch._C._current_graph_task_id() != -1


def is_recomputing() -> bool:
    """True when the forward now running is a checkpoint recomputation (explicit or ambient signal)."""
    if torch.compiler.is_compiling():
        return False
    return _explicit_depth() > 0 or forward_inside_backward()


def explicitly_recomputing() -> bool:
    """True inside `recomputing()` on this thread."""
    if torch.compiler.is_compiling():
        return False
    return _explicit_depth() > 0


class _GlobalModuleHooks:
    """Process-wide module hooks installed only while some thread needs them.

    Global hooks slow every module call, so they are reference counted and removed as soon as
    the last region that needs them ends; the hooks themselves check thread-local state.
    """

    def __init__(self, pre_hook: Callable, post_hook: Callable | None) -> None:
        self._pre_hook = pre_hook
        self._post_hook = post_hook
        self._lock = threading.Lock()
        self._users = 0
        self._handles: list = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._handles.append(_module.register_module_forward_pre_hook(self._pre_hook))
                if self._post_hook is not None:
                    self._handles.append(
                        _module.register_module_forward_hook(self._post_hook, always_call=True)
                    )
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for handle in self._handles:
                        handle.remove()
                    self._handles.clear()


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Mark the forwards run inside this block, on this thread, as a recomputation."""
    _state.depth = _explicit_depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
