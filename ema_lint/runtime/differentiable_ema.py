"""An exponential moving average you can backpropagate through, in bounded memory.

`average = decay * average + (1 - decay) * sample` kept with its autograd history links every
step's graph to the next: memory grows with the number of steps and the second `backward()`
fails ("Trying to backward through the graph a second time"). Each mode below computes the
same forward value (bit for bit: one shared formula) and differs only in the gradient:

- `constant`: no gradient (BatchNorm-style running statistic);
- `detach`: gradient of the newest term only, `(1 - decay) * dL/daverage` w.r.t. the sample;
- `straight_through`: gradient `dL/daverage` passed to the current sample unchanged, the
  sample's full Jacobian (the compositional / MINE estimator); recommended when the average
  feeds a loss;
- `trace`: the exact gradient of the average w.r.t. given parameters, carried by an
  eligibility trace `e = decay * e + (1 - decay) * d sample / d params` kept beside the
  average (memory `average.numel() * sum(p.numel())`; exact while the parameters are fixed,
  the usual real-time-recurrent-learning approximation while they train);
- `truncated`: the exact gradient of the last `horizon` terms, `sum_j<K (1 - decay) decay**j
  d sample_{t-j} / d params`, from the last K sample Jacobians kept in a ring buffer
  (memory K times that of `trace`). Past graphs are not kept, so parameters may be updated
  in place between steps.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

MODES = ("constant", "detach", "straight_through", "trace", "truncated")
JACOBIAN_MODES = ("trace", "truncated")
STATELESS_MODES = ("constant", "detach", "straight_through")


def _blend(average: torch.Tensor, sample: torch.Tensor, decay: float) -> torch.Tensor:
    # The one value formula every mode uses, so forward values agree bit for bit.
    return torch.add(average * decay, sample, alpha=1.0 - decay)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, sample: torch.Tensor, average: torch.Tensor, decay: float) -> torch.Tensor:
        return _blend(average, sample, decay)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


class _TraceGradient(torch.autograd.Function):
    """Value: the new average. Gradient w.r.t. each parameter: `grad` contracted with its
    d average / d param (a trace or a truncated sum of Jacobians)."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, traces: Sequence[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*traces)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        dims = grad.dim()
        param_grads = tuple(torch.tensordot(grad, trace, dims=dims) for trace in ctx.saved_tensors)
        return (None, None, *param_grads)


def ema_update(
    average: torch.Tensor, sample: torch.Tensor, decay: float, mode: str = "straight_through"
) -> torch.Tensor:
    """One EMA step `decay * average + (1 - decay) * sample` that never links to `average`'s history.

    ```python
    baseline = torch.zeros(())
    for batch in loader:
        baseline = ema_update(baseline, critic(batch).exp().mean(), 0.99)  # straight-through
        loss = -critic(batch).mean() + baseline.log()  # backward() works every step
    ```
    Stateless modes only ("constant", "detach", "straight_through"); use `DifferentiableEMA`
    for "trace". Only `sample` receives a gradient.
    """
    if mode not in STATELESS_MODES:
        raise ValueError(f"ema_update supports modes {STATELESS_MODES}, got {mode!r}; use DifferentiableEMA")
    average = average.detach()
    if mode == "constant":
        with torch.no_grad():
            return _blend(average, sample, decay)
    if mode == "detach":
        return _blend(average, sample, decay)
    return _StraightThrough.apply(sample, average, decay)


class DifferentiableEMA(nn.Module):
    """An EMA module with a bounded-memory gradient; `forward(sample)` updates and returns the average.

    ```python
    ema = DifferentiableEMA(0.99, mode="trace", parameters=critic.parameters())
    for batch in loader:
        average = ema(critic(batch).mean())   # exact d average / d critic parameters
        average.backward()
    ```
    The average starts at zero, like BatchNorm's `running_mean`. `state_dict()` holds the
    average; in "trace" mode one trace per parameter (`trace_0`, `trace_1`, ...); in
    "truncated" mode (`horizon=K`) one ring buffer of K Jacobians per parameter
    (`window_0`, ...) and the next slot (`window_next`).
    """

    def __init__(
        self,
        decay: float,
        mode: str = "straight_through",
        *,
        shape: Sequence[int] = (),
        parameters: Iterable[torch.Tensor] | None = None,
        horizon: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if (mode in JACOBIAN_MODES) != (parameters is not None):
            raise ValueError('pass parameters=... exactly when mode is "trace" or "truncated"')
        if (mode == "truncated") != (horizon is not None) or (horizon is not None and horizon < 1):
            raise ValueError('pass horizon=K >= 1 exactly when mode="truncated"')
        self.decay = decay
        self.mode = mode
        self.horizon = horizon
        self.register_buffer("average", torch.zeros(shape, dtype=dtype, device=device))
        # Not registered: the parameters belong to the caller's model, not to this module.
        self.trace_parameters: list[torch.Tensor] = list(parameters) if parameters is not None else []
        self._jacobian_shapes = [(*shape, *param.shape) for param in self.trace_parameters]
        like = {"dtype": self.average.dtype, "device": self.average.device}
        for index, jacobian_shape in enumerate(self._jacobian_shapes):
            if mode == "trace":
                self.register_buffer(f"trace_{index}", torch.zeros(jacobian_shape, **like))
            else:
                self.register_buffer(f"window_{index}", torch.zeros((horizon, *jacobian_shape), **like))
        if mode == "truncated":
            self.register_buffer("window_next", torch.zeros((), dtype=torch.long, device=self.average.device))

    def _numbered(self, prefix: str) -> list[torch.Tensor]:
        return [getattr(self, f"{prefix}_{index}") for index in range(len(self.trace_parameters))]

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        if sample.shape != self.average.shape:
            raise ValueError(f"sample shape {tuple(sample.shape)} != average shape {tuple(self.average.shape)}")
        if self.mode in STATELESS_MODES:
            out = ema_update(self.average, sample, self.decay, self.mode)
            # Reassigned, never written in place, so earlier outputs and saved tensors stay valid.
            self.average = out.detach()
            return out
        params = self.trace_parameters
        with torch.no_grad():
            value = _blend(self.average, sample.detach(), self.decay)
        jacobians = self._sample_jacobians(sample, params)
        with torch.no_grad():
            if self.mode == "trace":
                derivatives = [_blend(t, j, self.decay) for t, j in zip(self._numbered("trace"), jacobians)]
                for index, trace in enumerate(derivatives):
                    # Reassigned, never written in place: an earlier output's backward still reads the old one.
                    setattr(self, f"trace_{index}", trace)
            else:
                derivatives = self._truncated_derivatives(jacobians)
        self.average = value
        return _TraceGradient.apply(value, derivatives, *params)

    def _truncated_derivatives(self, jacobians: list[torch.Tensor]) -> list[torch.Tensor]:
        horizon = self.horizon
        slot = int(self.window_next) % horizon
        ages = [(slot - s) % horizon for s in range(horizon)]
        # Slots never written hold zeros, so they add nothing before the window fills.
        weights = torch.tensor(
            [(1.0 - self.decay) * self.decay**age for age in ages], dtype=self.average.dtype, device=self.average.device
        )
        derivatives = []
        for window, jacobian in zip(self._numbered("window"), jacobians):
            window[slot] = jacobian  # the window itself is never saved for backward
            derivatives.append(torch.tensordot(weights, window, dims=1))
        self.window_next += 1
        return derivatives

    def _sample_jacobians(self, sample: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """d sample / d param for each param, shaped (*sample.shape, *param.shape)."""
        like = {"dtype": self.average.dtype, "device": self.average.device}
        if not sample.requires_grad:
            return [torch.zeros(shape, **like) for shape in self._jacobian_shapes]
        basis = torch.eye(sample.numel(), dtype=sample.dtype, device=sample.device).reshape(-1, *sample.shape)
        rows = torch.autograd.grad(
            sample, params, grad_outputs=basis, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return [
            torch.zeros(shape, **like) if row is None else row.reshape(shape)
            for row, shape in zip(rows, self._jacobian_shapes)
        ]
