"""Fused exponential moving average of a model's weights.

One `torch._foreach_lerp_` per (device, dtype) group replaces the Python loop over
parameters; Python overhead, not arithmetic, dominates that loop on models with many small
tensors. `exact=True` uses `_foreach_mul_` + `_foreach_add_`, which gives bit-for-bit the
values of the classic loop `ema.mul_(decay).add_(param, alpha=1 - decay)`; lerp rounds
differently (it computes `ema + w * (param - ema)`).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


_SCALAR_EXACT_DTYPES = frozenset({torch.float32, torch.float64})


@torch.no_grad()
def foreach_ema_update(
    ema_tensors: Sequence[torch.Tensor],
    model_tensors: Sequence[torch.Tensor],
    decay: float,
    exact: bool = True,
) -> None:
    """In place, `ema = decay * ema + (1 - decay) * model` for every pair, fused per (device, dtype).

    Model tensors on another device or of another dtype are converted to their EMA tensor's
    first (an fp32 EMA of a bf16 model, an EMA kept on the CPU). Non-floating tensors (such
    as `num_batches_tracked`) are copied, since averaging a counter is meaningless.
    """
    if len(ema_tensors) != len(model_tensors):
        raise ValueError(
            f"ema_tensors has {len(ema_tensors)} tensors but model_tensors has {len(model_tensors)}"
        )
    emas, currents = list(ema_tensors), list(model_tensors)
    # Grouping happens in C++: a per-tensor Python loop here would cost as much as the update.
    ema_kinds = torch._C._group_tensors_by_device_and_dtype([emas], False)
    if len(ema_kinds) == 1 and list(ema_kinds) == list(torch._C._group_tensors_by_device_and_dtype([currents], False)):
        # The common case: one device and dtype on both sides, so no regrouping is needed.
        ((device, dtype),) = ema_kinds
        _update_group(emas, currents, decay, exact, device, dtype)
        return
    groups = torch._C._group_tensors_by_device_and_dtype([emas, currents], False)
    for (device, dtype), ((group_emas, group_currents), _) in groups.items():
        if list(torch._C._group_tensors_by_device_and_dtype([group_currents], False)) != [(device, dtype)]:
            group_currents = [t.to(device=device, dtype=dtype, non_blocking=True) for t in group_currents]
        _update_group(group_emas, group_currents, decay, exact, device, dtype)


def _update_group(
    emas: list[torch.Tensor],
    currents: list[torch.Tensor],
    decay: float,
    exact: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    if not (dtype.is_floating_point or dtype.is_complex):
        torch._foreach_copy_(emas, currents, non_blocking=True)
    elif exact:
        # For reduced precision a tensor factor: the Python-scalar overload rounds the factor
        # to bf16/fp16 first on the CPU, unlike `Tensor.mul_`, so its results would differ from
        # the loop's. In fp32/fp64 the scalar overload is exact and avoids the slower
        # tensor-by-0-dim-tensor kernel.
        factor = decay if dtype in _SCALAR_EXACT_DTYPES else torch.tensor(decay, dtype=torch.float64, device=device)
        torch._foreach_mul_(emas, factor)
        torch._foreach_add_(emas, currents, alpha=1.0 - decay)
    else:
        torch._foreach_lerp_(emas, currents, 1.0 - decay)


def _parameters_and_buffers(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`list(module.parameters()), list(module.buffers())` in one walk.

    The generic generators cost about as much as the fused update itself on models with
    thousands of small modules; the order differs from theirs but is the same for any two
    modules of the same structure, which is all the pairing needs.
    """
    params: list[torch.Tensor] = []
    buffers: list[torch.Tensor] = []
    seen: set[int] = set()
    pending = [module]
    while pending:
        current = pending.pop()
        for tensor in current._parameters.values():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                params.append(tensor)
        for tensor in current._buffers.values():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                buffers.append(tensor)
        for child in current._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                pending.append(child)
    return params, buffers


class ModelEMA(nn.Module):
    """An exponential moving average of `model`'s parameters (and buffers), updated in fused steps.

    ```python
    ema = ModelEMA(model, decay=0.9999, warmup_power=3 / 4)
    for batch in loader:
        loss_fn(model(batch)).backward()
        optimizer.step()
        ema.update(model)
    evaluate(ema.module)
    ```

    - decay schedule: with `warmup_power=None` the decay is constant; otherwise it is timm's
      warm-up `1 - (1 + step / warmup_gamma) ** -warmup_power`, clamped to `[min_decay, decay]`,
      so early averages follow the model closely (`warmup_power=3/4` suits long runs, `2/3` short).
    - buffers: floating-point buffers (BatchNorm running statistics) are averaged like
      parameters when `update_buffers=True`, copied otherwise; integer buffers are copied.
    - `device`/`dtype`: keep the average elsewhere (`device="cpu"`) or in another precision
      (`dtype=torch.float32` for a bf16 model); only floating-point tensors change dtype.
    - `exact=True`: bit-for-bit the values of the loop `ema.mul_(d).add_(p, alpha=1 - d)`.
    - `state_dict()` holds the averaged model under `module.` and the update count.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        min_decay: float = 0.0,
        warmup_gamma: float = 1.0,
        warmup_power: float | None = None,
        update_buffers: bool = True,
        exact: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_decay <= decay <= 1.0:
            raise ValueError(f"need 0 <= min_decay <= decay <= 1, got min_decay={min_decay}, decay={decay}")
        self.decay = decay
        self.min_decay = min_decay
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.update_buffers = update_buffers
        self.exact = exact
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        if device is not None or dtype is not None:
            self.module.to(device=device, dtype=dtype)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def decay_at(self, step: int) -> float:
        if self.warmup_power is None:
            return self.decay
        warm = 1.0 - (1.0 + step / self.warmup_gamma) ** -self.warmup_power
        return max(self.min_decay, min(self.decay, warm))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Average `model` into the EMA; `step` defaults to the number of updates so far."""
        decay = self.decay_at(int(self.num_updates) if step is None else step)
        ema_params, ema_buffers = _parameters_and_buffers(self.module)
        model_params, model_buffers = _parameters_and_buffers(model)
        if len(ema_params) != len(model_params) or len(ema_buffers) != len(model_buffers):
            raise ValueError("model does not have the structure of the model this EMA was made from")
        if self.update_buffers:
            foreach_ema_update(ema_params + ema_buffers, model_params + model_buffers, decay, self.exact)
        else:
            foreach_ema_update(ema_params, model_params, decay, self.exact)
            if ema_buffers:
                torch._foreach_copy_(ema_buffers, model_buffers, non_blocking=True)
        self.num_updates += 1

    def set(self, model: nn.Module) -> None:
        """Copy `model`'s weights into the EMA (a restart of the average); keys must match."""
        self.module.load_state_dict(model.state_dict())

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
