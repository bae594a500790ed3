"""A checkpoint-aware torch.fx tracer.

Stock `symbolic_trace` inlines every `torch.utils.checkpoint` call and forgets the region,
runs in-place buffer updates once at trace time, writes proxies onto the live model on
`self.x = ...`, drops `torch.no_grad()` and fails on `tensor.requires_grad` in control flow.
`EmaTracer` fixes each of those for the duration of one trace and restores every patch
afterwards, even when tracing fails:

- every checkpoint entry point (the `torch.utils.checkpoint` attributes, aliases bound by
  `from torch.utils.checkpoint import checkpoint` anywhere, `functools.partial(checkpoint, ...)`
  stored on modules) is replaced by an interceptor that records a `CheckpointRegion` and runs
  the function inline, so every node created inside carries the region ids in
  `node.meta[REGIONS_META]` (outermost first);
- running-stat modules are leaves, so each one is a single `call_module` node;
- buffers are proxied, so in-place updates on them are nodes;
- assignments to attributes of the traced modules become `setattr` nodes instead of
  writes to the live model;
- grad mode is stamped on every node (`GRAD_ENABLED_META`) and switches are recorded as
  `torch._C._set_grad_enabled` nodes, so the traced module keeps `torch.no_grad()` blocks;
- `proxy.requires_grad` is a concrete bool: whether the value depends on a parameter (or a
  grad-requiring input) through differentiable ops with grad mode on, which is what the
  eager model would see during a training step;
- `parameters()`, `buffers()` and their `named_` forms on the traced modules yield proxies
  (with the real tensor's `dtype`, `device` and `shape`), so a loop over them (a teacher EMA
  called from forward) becomes nodes instead of running on the live tensors at trace time;
- `tensor.data = value` becomes an `assign_data` node.
"""

from __future__ import annotations

import collections
import functools
import inspect
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.fx
import torch.utils.checkpoint
from torch.fx.node import Argument, Node, Target

# One definition of "running-stat module" for the runtime and the analyses.
from ema_lint.runtime.running_stats import is_running_stat_module

# Tracing patches classes and module namespaces process-wide, so traces on two threads would
# undo each other's patches out of order.
_TRACING = threading.RLock()

REGIONS_META = "ema_lint.checkpoint_regions"
GRAD_ENABLED_META = "ema_lint.grad_enabled"
CARRIES_GRAD_META = "ema_lint.carries_grad"
MODULE_META = "ema_lint.module"
RECOMPUTED_META = "ema_lint.recomputed"

# Ops whose outputs never carry autograd history, whatever their inputs.
_NON_DIFFERENTIABLE_METHODS = frozenset(
    {
        "detach", "detach_", "size", "dim", "numel", "argmax", "argmin", "eq", "ne", "lt", "le",
        "gt", "ge", "sign", "long", "int", "bool", "nonzero", "isnan", "isfinite", "item",
    }
)
_NON_DIFFERENTIABLE_FUNCTIONS = frozenset(
    {
        torch.Tensor.detach, torch.detach, torch.argmax, torch.argmin, torch.eq, torch.ne,
        torch.lt, torch.le, torch.gt, torch.ge, torch.sign, torch.isnan, torch.isfinite,
        torch.numel, torch.zeros_like, torch.ones_like, torch.empty_like, getattr, len,
        torch.is_grad_enabled,
    }
)
# `assign_data` joins them below, once defined: `p.data = v` never records autograd history.


@dataclass(frozen=True)
class CheckpointRegion:
    """One call of a checkpoint entry point seen while tracing.

    `entry` is the entry point's qualified name; `use_reentrant` is as passed (None when the
    caller left torch's default); `options` holds the other keyword arguments by name, with
    callables given by qualified name so the record stays plain data; `module` is the
    qualified name of the module whose forward made the call ("" for the root).
    """

    id: int
    entry: str
    function: str
    use_reentrant: bool | None
    options: dict[str, Any]
    parent: int | None
    module: str
    # whether grad was on where checkpoint was called: torch recomputes only then
    grad_enabled: bool = True
    context_fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # where the region comes from, for people: `file:line` of the call outside torch, or the
    # library flag that implies it
    origin: str | None = field(default=None, compare=False)


@dataclass(eq=False)
class Trace:
    """`root` is the traced model itself: the graph module's intermediate submodules are
    bare `Module`s, so names resolve against `root` to reach the user's classes."""

    root: torch.nn.Module
    graph: torch.fx.Graph
    regions: dict[int, CheckpointRegion]
    # qualified module name -> how many times its forward ran in the traced forward
    module_calls: collections.Counter[str] = field(default_factory=collections.Counter)

    @functools.cached_property
    def graph_module(self) -> torch.fx.GraphModule:
        # Built on first use: code generation costs as much as the analyses, which read only
        # the graph; rewrites need the module.
        return torch.fx.GraphModule(self.root, self.graph, type(self.root).__name__)


class TracingProxy(torch.fx.Proxy):
    """A proxy whose `requires_grad` is a concrete bool, so `if x.requires_grad:` traces, and
    whose `.data = value` is a graph op."""

    @property
    def requires_grad(self) -> bool:  # type: ignore[override]
        return bool(self.node.meta.get(CARRIES_GRAD_META, False))

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "data":
            self.tracer.create_proxy("call_function", assign_data, (self, value), {})
            return
        super().__setattr__(name, value)


class MemberProxy(TracingProxy):
    """A parameter or buffer reached through `parameters()` / `buffers()` / `state_dict()`: its
    dtype, device, shape and the like are the real tensor's, so code that branches on them
    (`if b.dtype.is_floating_point:`, `if next(self.parameters()).is_cuda:`) traces the way it runs."""

    def __init__(self, node: Node, tracer: torch.fx.proxy.TracerBase, tensor: torch.Tensor) -> None:
        super().__init__(node, tracer)
        object.__setattr__(self, "_tensor", tensor)

    @property
    def dtype(self) -> torch.dtype:
        return self._tensor.dtype

    @property
    def device(self) -> torch.device:
        return self._tensor.device

    @property
    def shape(self) -> torch.Size:
        return self._tensor.shape

    @property
    def ndim(self) -> int:
        return self._tensor.ndim

    @property
    def is_cuda(self) -> bool:
        return self._tensor.is_cuda

    @property
    def layout(self) -> torch.layout:
        return self._tensor.layout

    def is_floating_point(self) -> bool:
        return self._tensor.is_floating_point()

    def is_complex(self) -> bool:
        return self._tensor.is_complex()

    def dim(self) -> int:
        return self._tensor.dim()

    def numel(self) -> int:
        return self._tensor.numel()

    def size(self, dim: int | None = None) -> Any:
        return self._tensor.size() if dim is None else self._tensor.size(dim)


def _qualified_name(value: Any) -> str:
    if isinstance(value, functools.partial):
        return f"functools.partial({_qualified_name(value.func)})"
    module = getattr(value, "__module__", None)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if name is None and not isinstance(value, type):  # a callable object: name its class
        name = type(value).__qualname__
    if module and name:
        return f"{module}.{name}"
    return repr(value)


class EmaTracer(torch.fx.Tracer):
    """`part`, when given, names the submodule whose forward is traced, with every name in the
    graph still qualified from the root; `enclosing` are the checkpoint regions its caller
    runs it in (ids 0, 1, ... outermost first), which the trace cannot see."""

    def __init__(
        self,
        inputs_require_grad: bool = False,
        part: str | None = None,
        enclosing: tuple[CheckpointRegion, ...] = (),
    ) -> None:
        super().__init__(autowrap_modules=(math,))
        self.proxy_buffer_attributes = True
        self.inputs_require_grad = inputs_require_grad
        self.part = part
        self.regions: dict[int, CheckpointRegion] = {region.id: region for region in enclosing}
        self.module_calls: collections.Counter[str] = collections.Counter()
        self._region_stack: list[int] = [region.id for region in enclosing]
        self._graph_grad_enabled = True
        self._saved_grad_mode: Node | None = None
        self._assigned: dict[int, Any] = {}  # id(tensor) -> the proxy last stored into it
        self._traced_module_ids: set[int] = set()
        # torch.fx looks parameters up through `named_parameters` itself; those calls must see
        # the real tensors, so they run with this depth above zero.
        self._internal_lookups = 0
        self._member_names: dict[int, str] = {}
        self._member_proxies: dict[str, MemberProxy] = {}

    # ---- leaves, proxies, nodes ----------------------------------------------------------

    def call_module(
        self, m: torch.nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.module_calls[self.path_of_module(m)] += 1
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return is_running_stat_module(m) or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: Node) -> torch.fx.Proxy:
        return TracingProxy(node, self)

    def create_node(
        self,
        kind: str,
        target: Target,
        args: tuple[Argument, ...],
        kwargs: dict[str, Argument],
        name: str | None = None,
        type_expr: Any | None = None,
    ) -> Node:
        grad_enabled = torch.is_grad_enabled()
        if kind not in ("placeholder", "get_attr") and grad_enabled != self._graph_grad_enabled:
            self._record_grad_mode_switch(grad_enabled)
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta[REGIONS_META] = tuple(self._region_stack)
        node.meta[RECOMPUTED_META] = self._recomputed()
        node.meta[GRAD_ENABLED_META] = grad_enabled
        node.meta[MODULE_META] = self._current_module_path()
        node.meta[CARRIES_GRAD_META] = self._carries_grad(node, grad_enabled)
        return node

    def _recomputed(self) -> bool:
        """Whether backward runs the code being traced again: it is inside a region entered
        with grad on, even where it turns grad off itself (`with torch.no_grad():` blocks of a
        checkpointed function rerun too)."""
        return any(self.regions[r].grad_enabled for r in self._region_stack)

    def _current_module_path(self) -> str:
        if not self.module_stack:
            return self.part or ""
        return next(reversed(self.module_stack.values()))[0]

    def _record_grad_mode_switch(self, enabled: bool) -> None:
        """Keep `with torch.no_grad():` in the graph: save the caller's mode on the way in,
        restore it on the way out, so the traced module behaves under any ambient mode."""
        self._graph_grad_enabled = enabled
        create = super().create_node
        if not enabled:
            self._saved_grad_mode = create("call_function", torch.is_grad_enabled, (), {})
            switch = create("call_function", torch._C._set_grad_enabled, (False,), {})
        else:
            restore_to: Argument = self._saved_grad_mode if self._saved_grad_mode is not None else True
            switch = create("call_function", torch._C._set_grad_enabled, (restore_to,), {})
        for node in (switch, self._saved_grad_mode):
            if node is not None and REGIONS_META not in node.meta:
                node.meta[REGIONS_META] = tuple(self._region_stack)
                node.meta[RECOMPUTED_META] = self._recomputed()
                node.meta[GRAD_ENABLED_META] = False
                node.meta[MODULE_META] = self._current_module_path()
                node.meta[CARRIES_GRAD_META] = False

    def _carries_grad(self, node: Node, grad_enabled: bool) -> bool:
        if node.op == "placeholder":
            return self.inputs_require_grad
        if node.op == "get_attr":
            value = _resolve_attribute(self.root, str(node.target))
            return isinstance(value, torch.Tensor) and value.requires_grad
        if node.op == "output":
            return any(_inputs_carry_grad(node))
        if not grad_enabled:
            return False
        if node.op == "call_method" and node.target in _NON_DIFFERENTIABLE_METHODS:
            return False
        if node.op == "call_function" and node.target in _NON_DIFFERENTIABLE_FUNCTIONS:
            return False
        if node.op == "call_module":
            module = _resolve_attribute(self.root, str(node.target))
            # The parameter dicts, not `parameters()`: on traced classes that yields proxies.
            if any(p is not None and p.requires_grad for m in module.modules() for p in m._parameters.values()):
                return True
        carries = any(_inputs_carry_grad(node))
        if carries and writes_in_place(node):
            destination = node.args[0]
            if isinstance(destination, Node):
                destination.meta[CARRIES_GRAD_META] = True
        return carries

    # ---- the trace -----------------------------------------------------------------------

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        # The patches are process-wide and undone in reverse order: traces take turns.
        with _TRACING:
            return self._trace(root, concrete_args)

    def _trace(self, root: Any, concrete_args: dict[str, Any] | None) -> torch.fx.Graph:
        if isinstance(root, torch.nn.Module):
            traced = root.get_submodule(self.part) if self.part else root
            self._traced_module_ids = {id(m) for m in traced.modules()}
            scope_roots = list(traced.modules())
            members = [*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)]
            for name, tensor in reversed(members):  # a shared tensor keeps its first name
                self._member_names[id(tensor)] = name
        else:
            scope_roots = []
        with _Patches() as patches, torch.enable_grad():
            self._install_checkpoint_interceptors(patches, scope_roots)
            self._patch_module_classes(patches, list(dict.fromkeys(type(m) for m in scope_roots)))
            graph = super().trace(root, concrete_args)
        return graph

    def create_args_for_root(
        self, root_fn: Callable[..., Any], is_module: bool, concrete_args: Any = None
    ) -> tuple[Any, list[Any]]:
        if not self.part:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        # The part's forward with the part as `self`; torch.fx keeps the root for names.
        part = self.root.get_submodule(self.part)
        function, args = super().create_args_for_root(type(part).forward, is_module, concrete_args)
        return function, [part, *args[1:]]

    def _patch_module_classes(self, patches: "_Patches", classes: list[type]) -> None:
        """Intercept attribute assignment and parameter/buffer iteration on the traced classes.

        Patching each traced class rather than `nn.Module` itself matters for speed: assigning
        to a class invalidates the method caches of all its subclasses, thousands for
        `nn.Module` once timm is imported. Originals are resolved before any patch, so a
        class and its subclass never wrap each other's wrapper. A class with its own
        `__setattr__` runs it first, as without tracing, so then `nn.Module.__setattr__`
        itself is intercepted.
        """
        module_setattr = torch.nn.Module.__setattr__
        custom_setattr = any(cls.__setattr__ is not module_setattr for cls in classes)
        planned: list[tuple[type, str, Any]] = []
        for cls in classes:
            for method in ("named_parameters", "named_buffers"):
                planned.append((cls, method, self._member_iteration(getattr(cls, method))))
            planned.append((cls, "state_dict", self._state_dict(getattr(cls, "state_dict"))))
            if not custom_setattr:
                planned.append((cls, "__setattr__", self._module_setattr(module_setattr)))
        if custom_setattr:
            planned.append((torch.nn.Module, "__setattr__", self._module_setattr(module_setattr)))
        for cls, name, value in planned:
            patches.set_attribute(cls, name, value)

    def _member_iteration(self, original: Callable[..., Iterator[tuple[str, torch.Tensor]]]) -> Callable[..., Any]:
        tracer = self

        def named_members(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
            members = original(module, *args, **kwargs)
            if tracer._internal_lookups or id(module) not in tracer._traced_module_ids:
                return members
            return ((name, tracer._member_proxy(tensor)) for name, tensor in members)

        return named_members

    def _state_dict(self, original: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
        """`state_dict()` of a traced module holds proxies for its parameters and buffers
        (detached unless `keep_vars=True`, as the real one): an EMA loop over its values is then
        graph nodes, not writes into the live model at trace time."""
        tracer = self

        def state_dict(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            result = original(module, *args, **kwargs)
            if tracer._internal_lookups or id(module) not in tracer._traced_module_ids:
                return result
            # The deprecated positional form is `state_dict(destination, prefix, keep_vars)`.
            prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
            keep_vars = kwargs.get("keep_vars", args[2] if len(args) > 2 else False)
            for key, value in list(result.items()):
                if not (isinstance(value, torch.Tensor) and key.startswith(prefix)):
                    continue
                member = _resolve_attribute(module, key[len(prefix):])
                if not isinstance(member, torch.Tensor):
                    continue
                proxy = tracer._member_proxy(member)
                if proxy is member:
                    continue
                if not keep_vars:
                    proxy = tracer.create_proxy(
                        "call_method", "detach", (proxy,), {},
                        proxy_factory_fn=lambda node, real=member: MemberProxy(node, tracer, real),
                    )
                result[key] = proxy
            return result

        return state_dict

    def _member_proxy(self, tensor: torch.Tensor) -> Any:
        assigned = self._assigned.get(id(tensor))
        if assigned is not None:
            return assigned
        name = self._member_names.get(id(tensor))
        if name is None:  # registered during this forward: not a graph attribute
            return tensor
        if name not in self._member_proxies:
            self._member_proxies[name] = self.create_proxy(
                "get_attr", name, (), {}, proxy_factory_fn=lambda node: MemberProxy(node, self, tensor)
            )
        return self._member_proxies[name]

    def create_arg(self, a: Any) -> Argument:
        if not isinstance(a, torch.Tensor):
            return super().create_arg(a)
        # torch.fx names a tensor argument by searching `named_parameters()`/`named_buffers()`,
        # which must yield the real tensors for that.
        self._internal_lookups += 1
        try:
            return super().create_arg(a)
        finally:
            self._internal_lookups -= 1

    def _module_setattr(self, original: Callable[..., None]) -> Callable[..., None]:
        tracer = self

        def intercepted_setattr(module: torch.nn.Module, name: str, value: Any) -> None:
            if id(module) not in tracer._traced_module_ids or not _is_traceable_value(value):
                return original(module, name, value)
            current = _resolve_attribute(module, name)
            if isinstance(current, torch.Tensor) and not isinstance(current, torch.nn.Parameter):
                destination = tracer._assigned.get(id(current))
                if destination is None:
                    destination = tracer.create_proxy("get_attr", tracer._attribute_path(module, name), (), {})
                stored = tracer.create_proxy("call_function", store, (destination, value), {})
                tracer._assigned[id(current)] = stored
                return None
            if module is tracer.root:
                raise torch.fx.proxy.TraceError(
                    f"forward assigns `{name}` on the root module, which a graph cannot express"
                )
            owner = tracer.create_proxy("get_attr", tracer.path_of_module(module), (), {})
            tracer.create_proxy("call_function", setattr, (owner, name, value), {})
            return None

        return intercepted_setattr

    def _attribute_path(self, module: torch.nn.Module, name: str) -> str:
        owner = self.path_of_module(module)
        return f"{owner}.{name}" if owner else name

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        # A buffer assigned earlier in this forward reads back as the assigned value.
        assigned = self._assigned.get(id(attr_val)) if isinstance(attr_val, torch.Tensor) else None
        if assigned is not None:
            return assigned
        self._internal_lookups += 1
        try:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        finally:
            self._internal_lookups -= 1

    # ---- checkpoint interception ---------------------------------------------------------

    def _install_checkpoint_interceptors(self, patches: "_Patches", modules: list[torch.nn.Module]) -> None:
        originals: dict[int, Callable[..., Any]] = {
            id(torch.utils.checkpoint.checkpoint): self._intercept_checkpoint(torch.utils.checkpoint.checkpoint),
            id(torch.utils.checkpoint.checkpoint_sequential): self._intercept_sequential(
                torch.utils.checkpoint.checkpoint_sequential
            ),
        }
        for namespace, keys in _checkpoint_aliases(originals):
            for key in keys:
                interceptor = originals.get(id(namespace[key]))
                if interceptor is not None:
                    patches.set_item(namespace, key, interceptor)
        for module in modules:
            for key, value in list(vars(module).items()):
                if isinstance(value, functools.partial) and id(value.func) in originals:
                    rebound = functools.partial(originals[id(value.func)], *value.args, **value.keywords)
                    patches.set_item(vars(module), key, rebound)
                elif id(value) in originals:  # an entry point stored as is (`self._ckpt = checkpoint`)
                    patches.set_item(vars(module), key, originals[id(value)])

    def _intercept_checkpoint(self, original: Callable[..., Any]) -> Callable[..., Any]:
        tracer = self

        def checkpoint(function: Callable[..., Any], *args: Any, use_reentrant: bool | None = None, **options: Any) -> Any:
            with tracer._region(_qualified_name(original), function, use_reentrant, options):
                return function(*args)

        return checkpoint

    def _intercept_sequential(self, original: Callable[..., Any]) -> Callable[..., Any]:
        # torch's checkpoint_sequential calls the (intercepted) module-level `checkpoint`
        # for every segment but the last, which runs plainly; running the original gives
        # exactly those regions.
        return original

    def _region(self, entry: str, function: Callable[..., Any], use_reentrant: bool | None, options: dict[str, Any]) -> "_RegionScope":
        region = CheckpointRegion(
            id=len(self.regions),
            entry=entry,
            function=_qualified_name(function),
            use_reentrant=use_reentrant,
            options={k: (_qualified_name(v) if callable(v) else v) for k, v in options.items()},
            parent=self._region_stack[-1] if self._region_stack else None,
            module=self._current_module_path(),
            grad_enabled=torch.is_grad_enabled(),
            context_fn=options.get("context_fn"),
            origin=_call_site_outside_torch(),
        )
        self.regions[region.id] = region
        return _RegionScope(self._region_stack, region.id)


_TORCH_DIRECTORY = os.path.dirname(torch.__file__) + os.sep


def _call_site_outside_torch() -> str | None:
    """`file:line` of the innermost frame that is neither torch nor this tracer: the user's
    checkpoint call, also when it went through `checkpoint_sequential` or a wrapper."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_TORCH_DIRECTORY) and filename != __file__:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class _RegionScope:
    def __init__(self, stack: list[int], region_id: int) -> None:
        self.stack, self.region_id = stack, region_id

    def __enter__(self) -> None:
        self.stack.append(self.region_id)

    def __exit__(self, *exc: object) -> None:
        self.stack.pop()


class _Patches:
    """Set attributes and dict items for the duration of a `with` block; always restores."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> "_Patches":
        return self

    def set_item(self, namespace: dict[str, Any], key: str, value: Any) -> None:
        previous = namespace[key]
        namespace[key] = value
        self._undo.append(lambda: namespace.__setitem__(key, previous))

    def set_attribute(self, owner: Any, name: str, value: Any) -> None:
        """Set `owner.name`; restoring puts back its own value, or removes it when `owner`
        only inherited one."""
        if name in owner.__dict__:
            previous = owner.__dict__[name]
            setattr(owner, name, value)
            self._undo.append(lambda: setattr(owner, name, previous))
        else:
            setattr(owner, name, value)
            self._undo.append(lambda: delattr(owner, name))

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()


# module name -> (namespace, namespace size, keys bound to a checkpoint entry point).
# Scanning every imported module's namespace costs ~0.1 s with timm loaded; a namespace
# that is the same dict at the same size is not rescanned, only its known keys rechecked.
# So a name rebound to a checkpoint function without the namespace growing (`ckpt = None`
# at import, `ckpt = checkpoint` later) is missed. The caches hold the namespaces, which
# sys.modules holds anyway.
_alias_cache: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {}


@dataclass
class _AliasScan:
    """The last full pass over `sys.modules`: when the same module objects are loaded and
    every namespace has its size, two C-level comparisons stand in for the per-module pass."""

    modules: list[Any]
    namespaces: list[dict[str, Any]]
    sizes: list[int]
    found: list[tuple[dict[str, Any], tuple[str, ...]]]


_last_alias_scan: _AliasScan | None = None


def _checkpoint_aliases(originals: dict[int, Any]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    global _last_alias_scan
    modules = list(sys.modules.values())
    last = _last_alias_scan
    if last is not None and last.modules == modules and list(map(len, last.namespaces)) == last.sizes:
        candidates = last.found
    else:
        last = _last_alias_scan = _scan_namespaces(modules, originals)
        candidates = last.found
    found = []
    for namespace, keys in candidates:
        keys = tuple(k for k in keys if id(namespace.get(k)) in originals)
        if keys:
            found.append((namespace, keys))
    return found


def _scan_namespaces(modules: list[Any], originals: dict[int, Any]) -> _AliasScan:
    cache = _alias_cache
    namespaces: list[dict[str, Any]] = []
    found: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    seen: set[int] = set()
    for module in modules:
        namespace = getattr(module, "__dict__", None)
        # One module can sit under two names (`__main__` and `__mp_main__` once torch is
        # imported); its namespace is patched once.
        if not isinstance(namespace, dict) or id(namespace) in seen:
            continue
        seen.add(id(namespace))
        namespaces.append(namespace)
        name = namespace.get("__name__")
        cached = cache.get(name) if isinstance(name, str) else None
        if cached is not None and cached[0] is namespace and cached[1] == len(namespace):
            keys = cached[2]
        else:
            keys = tuple(k for k, v in list(namespace.items()) if id(v) in originals)
            if isinstance(name, str):
                cache[name] = (namespace, len(namespace), keys)
        if keys:
            found.append((namespace, keys))
    return _AliasScan(modules, namespaces, [len(n) for n in namespaces], found)


def _inputs_carry_grad(node: Node) -> Iterator[bool]:
    for argument in node.all_input_nodes:
        yield bool(argument.meta.get(CARRIES_GRAD_META, False))


def writes_in_place(node: Node) -> bool:
    """An in-place tensor method (`mul_`) or an attribute store: both write their first argument."""
    if node.op == "call_method":
        return str(node.target).endswith("_") and node.target != "requires_grad_"
    return node.op == "call_function" and node.target in (store, assign_data)


def _resolve_attribute(root: torch.nn.Module, target: str) -> Any:
    """`root.<target>` read from the module dicts: while tracing, `getattr` on a module is
    patched to create proxies."""
    value: Any = root
    for part in target.split(".") if target else ():
        namespace = getattr(value, "__dict__", None)
        if namespace is None:
            return None
        for table in ("_parameters", "_buffers", "_modules"):
            members = namespace.get(table, {})
            if part in members:
                value = members[part]
                break
        else:
            value = namespace.get(part)
    return value


def _is_traceable_value(value: Any) -> bool:
    return isinstance(value, (torch.fx.Proxy, torch.Tensor, int, float, bool))


def store(destination: torch.Tensor, value: Any) -> torch.Tensor:
    """`module.name = value` for an existing tensor attribute, as a graph op: the traced module
    writes into the attribute's tensor, so readers of the attribute see the new value."""
    return destination.copy_(value)


def assign_data(destination: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`destination.data = value` as a graph op (MoCo's `param_k.data = ...` EMA spelling)."""
    destination.data = value
    return destination


_NON_DIFFERENTIABLE_FUNCTIONS = _NON_DIFFERENTIABLE_FUNCTIONS | {assign_data}


def trace(model: torch.nn.Module, inputs_require_grad: bool = False) -> Trace:
    """Trace `model` with `EmaTracer`; raises whatever torch.fx raises when it cannot."""
    tracer = EmaTracer(inputs_require_grad=inputs_require_grad)
    graph = tracer.trace(model)
    return Trace(model, graph, tracer.regions, tracer.module_calls)


def trace_part(model: torch.nn.Module, part: str, enclosing: tuple[CheckpointRegion, ...] = ()) -> Trace:
    """Trace the forward of `model.get_submodule(part)` as its caller would run it inside the
    `enclosing` regions, names qualified from `model`. Its inputs count as carrying gradient
    (a part's inputs are usually computed from parameters). Every argument is a graph input
    at first, so `if residual is not None:` traces the branch that uses it; when that fails,
    flags that default to a constant (`output_attentions=False`) keep their default. Raises
    as `trace` does."""
    try:
        return _trace_part(model, part, enclosing, None)
    except Exception:  # any failure of user code under tracing: retry with the flags fixed
        forward = inspect.unwrap(type(model.get_submodule(part)).forward)
        flags = {
            name: parameter.default
            for name, parameter in inspect.signature(forward).parameters.items()
            if isinstance(parameter.default, (bool, int, float, str))
        }
        if not flags:
            raise
        return _trace_part(model, part, enclosing, flags)


def _trace_part(
    model: torch.nn.Module, part: str, enclosing: tuple[CheckpointRegion, ...], constants: dict[str, Any] | None
) -> Trace:
    tracer = EmaTracer(inputs_require_grad=True, part=part, enclosing=enclosing)
    graph = tracer.trace(model, concrete_args=constants)
    return Trace(model, graph, tracer.regions, tracer.module_calls)
