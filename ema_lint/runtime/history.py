"""Cut the autograd history that a module's forward leaves in its tensor attributes.

A buffer or tensor attribute updated from a value that carries autograd history (EMA201)
chains each step's graph to the next one: memory grows every step, and the next backward
through the attribute fails with "Trying to backward through the graph a second time".
`detach_after_forward(module, names)` detaches those attributes each time the module's
forward returns. The attributes hold the values the forward computed, the step's own
gradients are those of the unmodified module (the graph recorded during the forward is not
touched), and no graph outlives the step.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class DetachAfterForward:
    """Forward hook detaching `names` on the module it is registered on.

    An object rather than a closure so the module still pickles and deep-copies.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(dict.fromkeys(names))

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        for qualified in self.names:
            path, _, name = qualified.rpartition(".")
            owner = module.get_submodule(path)
            value = getattr(owner, name, None)
            if not isinstance(value, torch.Tensor) or value.grad_fn is None:
                continue
            # A new detached tensor on the same storage, never `detach_()`: the step's graph
            # may have saved this very tensor, or the forward may return it.
            if name in owner._buffers:
                owner._buffers[name] = value.detach()
            else:
                object.__setattr__(owner, name, value.detach())


def detach_after_forward(module: nn.Module, names: Iterable[str]) -> RemovableHandle:
    """Detach `module.<name>` for each of `names` (`"average"`, or a submodule's
    `"center.average"`) whenever `module`'s forward returns.

    ```python
    detach_after_forward(model.center, ["average"])  # `average` keeps no graph across steps
    ```

    The hook also runs when the forward raises (`always_call=True`), which is how a
    non-reentrant checkpoint stops a recomputation early.
    """
    return module.register_forward_hook(DetachAfterForward(names), always_call=True)
