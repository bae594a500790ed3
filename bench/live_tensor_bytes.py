"""Peak bytes of live tensor storage created inside a block, on any device, CPU included.

`torch.cuda.max_memory_allocated` has no CPU counterpart, so every storage an operator
returns is tracked until it is freed: storages keep their Python object for as long as the
C++ storage lives, so a weakref callback fires exactly when the memory is released. Outputs
that alias an input (views, in-place and out= results, detach) allocate nothing and are not
counted, so tensors created before the block (parameters, inputs) are never counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(ret.alias_info is not None for ret in func._schema.returns):
            return out
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                key = id(storage)
                if key not in self._tracked:
                    self._tracked.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._release, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out
