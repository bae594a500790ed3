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

import copy
import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn

MODES = ("constant", "detach", "straight_through", "trace", "truncated")
JACOBIAN_MODES = ("trace", "truncated")
STATELESS_MODES = ("constant", "detach", "straight_through")
# Default ceiling on the state "trace" and "truncated" keep (the Jacobians beside the average).
DEFAULT_MEMORY_BUDGET = 1 << 30


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
        param_grads = tuple(
            torch.tensordot(grad, trace, dims=dims) if needed else None
            for trace, needed in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])
        )
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
    The average starts at zero, like BatchNorm's `running_mean`; `bias_correction=True`
    divides what `forward` returns by `1 - decay**t` after `t` updates (as Adam does), so early
    averages are not pulled toward zero. `state_dict()` holds the average and the update count;
    in "trace" mode one trace per parameter (`trace_0`, `trace_1`, ...); in "truncated" mode
    (`horizon=K`) one ring buffer of K Jacobians per parameter (`window_0`, ...) and the next
    slot (`window_next`). The state keeps the declared `dtype` whatever the samples' dtype.

    "trace" and "truncated" are exact or refuse: an update under `no_grad` (the sample's
    Jacobian is unknown there) raises, a sample that depends on tensors requiring grad that
    are not in `parameters` raises (they would get no gradient), parameters that do not
    require grad get none, and a state above `memory_budget` bytes is refused when the
    module is built. A deep copy keeps the parameters (the copies when the model is copied in
    the same `deepcopy`); an unpickled one has none until `bind(parameters)`.
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
        bias_correction: bool = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
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
        self.bias_correction = bias_correction
        self.register_buffer("average", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device=self.average.device))
        # Not registered: the parameters belong to the caller's model, not to this module.
        self.trace_parameters: list[torch.Tensor] | None = list(parameters) if parameters is not None else []
        self._jacobian_shapes = [(*shape, *param.shape) for param in self.trace_parameters]
        state_bytes = self.state_bytes(shape, self.trace_parameters, mode, horizon, self.average.dtype)
        if state_bytes > memory_budget:
            raise ValueError(
                f'mode="{mode}" would keep {state_bytes / 2**20:.1f} MiB of Jacobians beside the average '
                f"({math.prod(shape)} values x {sum(p.numel() for p in self.trace_parameters)} parameters), over "
                f"memory_budget={memory_budget / 2**20:.1f} MiB: use mode=\"straight_through\" (no state), fewer "
                "parameters (the last layer), a smaller horizon, or raise memory_budget"
            )
        like = {"dtype": self.average.dtype, "device": self.average.device}
        for index, jacobian_shape in enumerate(self._jacobian_shapes):
            if mode == "trace":
                self.register_buffer(f"trace_{index}", torch.zeros(jacobian_shape, **like))
            else:
                self.register_buffer(f"window_{index}", torch.zeros((horizon, *jacobian_shape), **like))
        if mode == "truncated":
            self.register_buffer("window_next", torch.zeros((), dtype=torch.long, device=self.average.device))

    @staticmethod
    def state_bytes(
        shape: Sequence[int], parameters: Sequence[torch.Tensor], mode: str, horizon: int | None, dtype: torch.dtype
    ) -> int:
        """Bytes of Jacobian state a module of this configuration keeps: `numel(shape) *
        sum(p.numel())` values for "trace", `horizon` times that for "truncated", 0 otherwise."""
        if mode not in JACOBIAN_MODES:
            return 0
        copies = horizon if mode == "truncated" else 1
        return copies * math.prod(shape) * sum(p.numel() for p in parameters) * torch.empty((), dtype=dtype).element_size()

    def bind(self, parameters: Iterable[torch.Tensor]) -> "DifferentiableEMA":
        """Point "trace"/"truncated" at these parameters (after unpickling, or to follow a copied
        model); their shapes must be those the state was built for."""
        parameters = list(parameters)
        shapes = [(*self.average.shape, *p.shape) for p in parameters]
        if shapes != self._jacobian_shapes:
            raise ValueError(f"parameters of shapes {[tuple(p.shape) for p in parameters]} do not match the state")
        self.trace_parameters = parameters
        return self

    def reset(self) -> None:
        """Back to the state of a new module: a zero average, no updates, zero Jacobians."""
        with torch.no_grad():
            self.average = torch.zeros_like(self.average)
            self.updates.zero_()
            for name, buffer in list(self._buffers.items()):
                if name.startswith(("trace_", "window_")) and buffer is not None:
                    setattr(self, name, torch.zeros_like(buffer))

    @property
    def trace_parameters(self) -> list[torch.Tensor] | None:
        """The tensors "trace"/"truncated" differentiate with respect to (None once unpickled)."""
        pending = self.__dict__.pop("_copied_in", None)
        if pending is not None:
            # resolved on first use, when the `deepcopy` that made this copy is over: a copy of
            # the model holding both follows the copied parameters whatever their order
            self.__dict__["_trace_parameters"] = [pending.get(id(p), p) for p in self._trace_parameters]
        return self.__dict__["_trace_parameters"]

    @trace_parameters.setter
    def trace_parameters(self, parameters: list[torch.Tensor] | None) -> None:
        self.__dict__["_trace_parameters"] = parameters

    def __deepcopy__(self, memo: dict) -> "DifferentiableEMA":
        # The parameters are the caller's: a copy of this module alone keeps pointing at them,
        # a copy of the model holding both follows the copied parameters (read from `memo`).
        duplicate = self.__class__.__new__(self.__class__)
        memo[id(self)] = duplicate
        for key, value in self.__dict__.items():
            if key not in ("_trace_parameters", "_copied_in"):
                duplicate.__dict__[key] = copy.deepcopy(value, memo)
        duplicate.__dict__["_trace_parameters"] = self.trace_parameters
        if self.trace_parameters:
            duplicate.__dict__["_copied_in"] = memo
        return duplicate

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # a state saved before the update count existed loads; the count starts again at zero
        state_dict.setdefault(prefix + "updates", torch.zeros_like(self.updates))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_copied_in", None)
        # a pickle cannot hold a reference to the caller's live parameters
        state["_trace_parameters"] = None if self.mode in JACOBIAN_MODES else []
        return state

    def _numbered(self, prefix: str) -> list[torch.Tensor]:
        return [getattr(self, f"{prefix}_{index}") for index in range(len(self.trace_parameters))]

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        if sample.shape != self.average.shape:
            raise ValueError(f"sample shape {tuple(sample.shape)} != average shape {tuple(self.average.shape)}")
        if self.mode in STATELESS_MODES:
            self.updates += 1
            out = ema_update(self.average, sample, self.decay, self.mode).to(self.average.dtype)
            # Reassigned, never written in place, so earlier outputs and saved tensors stay valid.
            self.average = out.detach()
            return self._corrected(out)
        params = self._checked_parameters(sample)
        self.updates += 1
        with torch.no_grad():
            value = _blend(self.average, sample.detach(), self.decay).to(self.average.dtype)
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
        return self._corrected(_TraceGradient.apply(value, derivatives, *params))

    def _corrected(self, out: torch.Tensor) -> torch.Tensor:
        if not self.bias_correction or self.decay == 0.0:
            return out
        return out / (1.0 - self.decay ** int(self.updates))

    def _checked_parameters(self, sample: torch.Tensor) -> list[torch.Tensor]:
        """The parameters, when the exact gradient can be given; else a clear error."""
        params = self.trace_parameters
        if params is None:
            raise RuntimeError(
                f'this DifferentiableEMA(mode="{self.mode}") was unpickled: its parameters belong to the model; '
                "call .bind(model_parameters) first"
            )
        if not torch.is_grad_enabled() and any(p.requires_grad for p in params):
            raise RuntimeError(
                f'DifferentiableEMA(mode="{self.mode}") updated under torch.no_grad(): the sample\'s Jacobian is '
                "unknown there, so the trace would be silently wrong; update with gradients on"
            )
        untracked = _leaves_requiring_grad(sample) - {id(p) for p in params}
        if untracked:
            raise ValueError(
                f"the sample depends on {len(untracked)} tensor(s) that require grad but are not in parameters=; "
                f'mode="{self.mode}" would give them no gradient: add them to parameters, detach them, or use '
                'mode="straight_through"'
            )
        return params

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
        trained = [index for index, param in enumerate(params) if param.requires_grad]
        rows: list[torch.Tensor | None] = [None] * len(params)
        if trained:
            basis = torch.eye(sample.numel(), dtype=sample.dtype, device=sample.device).reshape(-1, *sample.shape)
            found = torch.autograd.grad(
                sample,
                [params[index] for index in trained],
                grad_outputs=basis,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            for index, row in zip(trained, found):
                rows[index] = row
        # a frozen parameter (requires_grad=False) has no Jacobian to keep and gets no gradient
        return [
            torch.zeros(shape, **like) if row is None else row.reshape(shape).to(**like)
            for row, shape in zip(rows, self._jacobian_shapes)
        ]


def _leaves_requiring_grad(sample: torch.Tensor) -> set[int]:
    """ids of the leaf tensors that require grad which `sample`'s autograd graph reaches."""
    if sample.grad_fn is None:
        return {id(sample)} if sample.requires_grad else set()
    leaves, seen, pending = set(), set(), [sample.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        pending.extend(next_node for next_node, _ in node.next_functions)
    return leaves
