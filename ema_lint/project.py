"""Project-wide facts computed once per run, before any rule looks at a file.

Rules that must see across files (which classes, defined anywhere in the checked tree,
hold a running-stat module; what a name imported from a sibling module is) read them
from `FileContext.project`. Facts are extracted per file with the stdlib `ast` parser,
which is several times faster than libcst and never imports the code; each file's facts
are plain data, so they are computed in worker processes and cached by content hash.

What a module attribute holds is found by a small flow-insensitive evaluation: every
value a name may take anywhere in its function counts (assignments, `append`/`extend`,
`for` targets, parameter defaults and annotations). Values are `Held` records: a class
or factory a name may refer to (`REF`), a module built by calling one (`BUILT`), or the
result of calling a project function or method (`RESULT`), resolved later by the index.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import sys
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ema_lint.analysis.backpropagated_returns import backpropagated_returns
from ema_lint.analysis.grad_mode_calls import grad_mode_calls
from ema_lint.analysis.graph_free import returns_no_graph
from ema_lint.analysis.syntax import parse_any
from ema_lint.analysis.torch_names import (
    ARRAY_LIBRARIES,
    BATCH_NORM_CONFIG_TYPES,
    EMA_HELPER_WORDS,
    IN_PLACE_METHODS,
    MODULE_OWN_ATTRIBUTES,
    OPENMMLAB_BN_BLOCKS,
    OPENMMLAB_CONV_MODULES,
    OPENMMLAB_NORM_CFG_POSITION,
    OPENMMLAB_NORM_FACTORY,
    OPENMMLAB_PACKAGES,
    OPTIMIZER_NAME,
    STEP_HOOKS,
)

REF, BUILT, RESULT, SELF_RESULT, PASSED = "ref", "built", "result", "self-result", "passed"

# Containers whose constructor arguments are the modules they hold.
CONTAINERS = frozenset(
    {
        "torch.nn.Sequential",
        "torch.nn.ModuleList",
        "torch.nn.ModuleDict",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.container.ModuleDict",
        "list",
        "tuple",
        "enumerate",
        "zip",
        "iter",
        "sorted",
        "dict",
        "filter",
        "reversed",
        "collections.OrderedDict",
        "typing.OrderedDict",
        # OpenMMLab's containers add only `init_cfg` to torch's
        "mmengine.model.ModuleList",
        "mmengine.model.Sequential",
        "mmengine.model.ModuleDict",
        "mmengine.model.base_module.ModuleList",
        "mmengine.model.base_module.Sequential",
        "mmengine.model.base_module.ModuleDict",
        "mmcv.runner.ModuleList",
        "mmcv.runner.Sequential",
        "mmcv.runner.base_module.ModuleList",
        "mmcv.runner.base_module.Sequential",
    }
)
PARTIAL = frozenset({"functools.partial"})
# timm's norm-layer factories map a norm class (or its name) to the class they build, with
# the same running statistics: BatchNorm2d -> BatchNormAct2d, GroupNorm -> GroupNormAct.
NORM_LAYER_FACTORIES = frozenset(
    {
        "timm.layers.create_norm_act.get_norm_act_layer",
        "timm.layers.create_norm.get_norm_layer",
        # the public re-exports, matched before the index can follow them
        "timm.layers.get_norm_act_layer",
        "timm.layers.get_norm_layer",
    }
)
# names timm's factories accept for a BatchNorm (`norm_layer='batchnorm'`)
_BATCH_NORM_NAMES = {
    "batchnorm": "timm.layers.norm_act.BatchNormAct2d",
    "batchnorm2d": "timm.layers.norm_act.BatchNormAct2d",
}

# Classes with running statistics in torch and in well-known libraries the checked tree may
# only import. Anything else counts only when its definition is in the checked tree.
_TORCH_RUNNING_STAT = frozenset(
    {
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LazyBatchNorm1d",
        "LazyBatchNorm2d",
        "LazyBatchNorm3d",
        "_BatchNorm",
        "_LazyNormBase",
    }
)
_TORCH_INSTANCE_NORM = frozenset(
    {"InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d"}
)
_TORCH_NN_PREFIXES = ("torch.nn.", "torch.nn.modules.batchnorm.", "torch.nn.modules.instancenorm.")
_LIBRARY_RUNNING_STAT = frozenset(
    {
        "timm.layers.BatchNormAct2d",
        "timm.layers.norm_act.BatchNormAct2d",
        "timm.layers.SyncBatchNormAct",
        "timm.layers.norm_act.SyncBatchNormAct",
        "timm.models.layers.BatchNormAct2d",
    }
)


# What a checkpointed region must not hold: modules updating running statistics (EMA101;
# the runtime's `running_stats_context_fn` makes them exact) or modules mutating other
# registered buffers (EMA103: spectral norm's power iteration, custom EMA buffers).
RUNNING_STATS, OTHER_BUFFERS = "running-stats", "other-buffers"
_RUNNING_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# `spectral_norm(module)` returns `module` with a pre-hook (or parametrization) whose power
# iteration writes `weight_u` / `_u`, `_v` in every training forward
_BUFFER_MUTATING_WRAPPERS = frozenset(
    {
        "torch.nn.utils.spectral_norm",
        "torch.nn.utils.spectral_norm.spectral_norm",
        "torch.nn.utils.parametrizations.spectral_norm",
    }
)


def is_running_stat_buffer(name: str) -> bool:
    return name in _RUNNING_STAT_BUFFERS or name.startswith("running_")


def builtin_running_stat_kind(qualified: str, tracks_running_stats: bool | None) -> str | None:
    """The short class name when `qualified` names a library class with running statistics
    (given the literal `track_running_stats` argument it was built with), else None."""
    short = qualified.rpartition(".")[2]
    if qualified in _LIBRARY_RUNNING_STAT:
        return None if tracks_running_stats is False else short
    if not any(qualified == prefix + short for prefix in _TORCH_NN_PREFIXES):
        return None
    if short in _TORCH_RUNNING_STAT:
        return None if tracks_running_stats is False else short
    if short in _TORCH_INSTANCE_NORM:
        return short if tracks_running_stats is True else None
    return None


@dataclass(frozen=True, order=True)
class Held:
    """One value a name may hold. `target` is a qualified name (REF, BUILT, RESULT) or a
    method name of the same class (SELF_RESULT); `tracks_running_stats` is the literal
    `track_running_stats=` argument, when one was given. PASSED: modules (`inner`) given
    as `argument` (a position "0", "1", ... or a keyword) to the constructor `target`; they
    are held when that class stores the parameter (`Residual(ConvBN(...))`)."""

    kind: str
    target: str
    tracks_running_stats: bool | None = None
    argument: str = ""
    inner: tuple["Held", ...] = ()


@dataclass(frozen=True)
class ClassFacts:
    name: str
    qualified_name: str
    bases: tuple[str, ...] = ()
    # `self.<attr>` -> values assigned to it in any method; "" collects children added
    # without a static name (`super().__init__(*layers)`, `self.add_module(*stage)`)
    attributes: dict[str, tuple[Held, ...]] = field(default_factory=dict)
    # method -> the `self.<name>` it reads (in nested functions and lambdas too)
    method_reads: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # method -> values it may return
    method_returns: dict[str, tuple[Held, ...]] = field(default_factory=dict)
    # registered buffers written by `forward` or a method it calls through `self.`
    updated_buffers: tuple[str, ...] = ()
    # attributes put in eval mode with frozen parameters (`.eval()` and `.requires_grad_(False)`)
    frozen_attributes: tuple[str, ...] = ()
    # overrides `train()` to put submodules back in eval mode (mmdet's `norm_eval`)
    keeps_submodules_in_eval: bool = False
    # every name the class binds statically: methods, class-level names, `self.<name> = ...`
    named_members: tuple[str, ...] = ()
    # `__init__` parameters (by name and by position, "0" after `self`) stored in attributes
    stored_parameters: tuple[str, ...] = ()
    # method -> the parameters (by name and position, "0" after `self`) it accumulates into
    # state of the instance (`self.sum += val * n`, `self.avg = m * self.avg + (1 - m) * val`,
    # `self.values.append(val)`): a meter's `update`
    accumulating_arguments: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModuleFacts:
    """What one module contributes to the project index."""

    module_name: str
    # local name -> fully qualified name, for every `import` / `from ... import` at any level
    imports: dict[str, str] = field(default_factory=dict)
    # names of classes defined at module level
    classes: tuple[str, ...] = ()
    class_facts: tuple[ClassFacts, ...] = ()
    # module-level functions -> values they may return (the values only when `structured`)
    function_returns: dict[str, tuple[Held, ...]] = field(default_factory=dict)
    # module-level `name = <value>` bindings that are references (`ckpt = partial(checkpoint, ...)`)
    aliases: dict[str, tuple[Held, ...]] = field(default_factory=dict)
    # modules imported with `from module import *`
    star_imports: tuple[str, ...] = ()
    # False only when no statement has the shape of an EMA step (see `may_hold_recurrence`)
    may_hold_recurrence: bool = True
    # False only when no expression has the shape `1 - <power or call>` (EMA102's corrections)
    may_hold_momentum_correction: bool = True
    # False only when no `for` loop writes anything a model-EMA loop could (see `may_hold_loop_update`)
    may_hold_loop_update: bool = True
    # False only when nothing named `backward` is referenced and no per-step hook
    # (`STEP_HOOKS`) is defined: no training step in this file
    calls_backward: bool = True
    # the qualified name of every name or attribute chain the file reads, recorded only
    # where a checkpoint region can be referenced (see `read_names`); resolved later by
    # the index, which is what `CheckpointSiteRule.uses_checkpointing` asks about
    read_names: tuple[str, ...] = ()
    # False when summarized without `class_facts` and `function_returns`' values (see
    # `summarize`): the index extracts them from `ProjectIndex.sources` on first need
    structured: bool = True
    # module-level functions whose every return holds no autograd history (see `returns_no_graph`)
    graph_free_functions: tuple[str, ...] = ()
    # top-level module names this file's imports mean under another name (see `separate_roots`)
    import_renames: tuple[tuple[str, str], ...] = ()
    # last names of the callees this file calls with gradient recording on, and of those it
    # calls only with it off (see `analysis.grad_mode_calls`)
    grad_on_calls: tuple[str, ...] = ()
    grad_off_calls: tuple[str, ...] = ()
    # module-level functions returning a name they backpropagate: `name` when returned
    # whole, `name:<i>` at position i of a returned tuple (see `analysis.backpropagated_returns`)
    backpropagated_returns: tuple[str, ...] = ()


@dataclass
class ProjectIndex:
    modules: dict[str, ModuleFacts] = field(default_factory=dict)
    # module -> (source, is_package), for the modules whose facts are not `structured`
    sources: dict[str, tuple[bytes, bool]] = field(default_factory=dict, repr=False, compare=False)
    _structured: dict[str, ModuleFacts | None] = field(default_factory=dict, repr=False, compare=False)
    _class_tables: dict[str, dict[str, ClassFacts]] = field(default_factory=dict, repr=False, compare=False)
    _consulted: set[str] = field(default_factory=set, repr=False, compare=False)
    _running_stat_paths: dict[tuple[str, str], tuple[str, ...] | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    _mentioning: dict[bytes, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)
    _calls_by_grad_mode: tuple[frozenset[str], frozenset[str]] | None = field(default=None, repr=False, compare=False)
    _step_helpers: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        # memo tables are rebuilt on demand
        return {"modules": self.modules, "sources": self.sources}

    def __setstate__(self, state) -> None:
        # every memo table starts empty, as in a new index
        self.__init__(state["modules"], state["sources"])

    @classmethod
    def from_facts(cls, facts: list[ModuleFacts], sources: dict[str, tuple[bytes, bool]] | None = None) -> "ProjectIndex":
        return cls({f.module_name: f for f in facts}, dict(sources or {}))

    def with_module(self, facts: ModuleFacts) -> "ProjectIndex":
        """This index with one module's facts replaced, keeping the others' extracted facts."""
        index = ProjectIndex({**self.modules, facts.module_name: facts}, self.sources)
        index._structured = {m: f for m, f in self._structured.items() if m != facts.module_name}
        index._class_tables = {m: t for m, t in self._class_tables.items() if m != facts.module_name}
        return index

    def modules_mentioning(self, word: bytes) -> frozenset[str]:
        """The checked modules whose source contains `word` (computed once per index)."""
        if word not in self._mentioning:
            self._mentioning[word] = frozenset(name for name, (source, _) in self.sources.items() if word in source)
        return self._mentioning[word]

    def checkpointing_layer_classes(self, base_name: str) -> frozenset[str]:
        """Qualified names of the checked classes deriving from a class named `base_name`,
        directly or through classes of the same module. Read from the class headers of the
        modules mentioning the name (a text scan: structuring hundreds of big modules to
        read their bases costs seconds); subclasses elsewhere are found through their MRO."""
        key = b"classes:" + base_name.encode()
        if key not in self._mentioning:
            found: set[str] = set()
            for module in sorted(self.modules_mentioning(base_name.encode())):
                headers = [
                    (match.group(1).decode(), {b.strip().rpartition(".")[2] for b in match.group(2).decode().split(",")})
                    for match in _CLASS_HEADER.finditer(self.sources[module][0])
                ]
                local = {base_name}
                changed = True
                while changed:
                    changed = False
                    for name, bases in headers:
                        if name not in local and bases & local:
                            local.add(name)
                            changed = True
                found |= {f"{module}.{name}" for name in local - {base_name}}
            self._mentioning[key] = frozenset(found)
        self._consulted.update(self.modules_mentioning(base_name.encode()))
        return self._mentioning[key]

    def checkpointing_layers_holding(self, base_name: str, state: str) -> frozenset[str]:
        """Those of `checkpointing_layer_classes(base_name)` that run a module holding `state`."""
        key = f"holding:{base_name}:{state}".encode()
        if key not in self._mentioning:
            layers = self.checkpointing_layer_classes(base_name)
            # a layer whose own module names no stateful layer is not worth a structural walk
            # (Hugging Face models are single files; a subclass elsewhere that adds one is found
            # through its MRO by the caller). Walking every layer's module costs ~15 s on
            # transformers, and would add only HF's `modular_*.py` generator sources, whose
            # generated `modeling_*.py` twins are reported.
            stateful = set().union(*(self.modules_mentioning(word) for word in _STATEFUL_WORDS[state]))
            candidates = [c for c in layers if c.rpartition(".")[0] in stateful]
            self._mentioning[key] = frozenset(c for c in candidates if self.running_stat_path(c, state=state) is not None)
        self._consulted.update(self.modules_mentioning(base_name.encode()))
        return self._mentioning[key]

    def start_recording(self) -> None:
        """Start recording the modules whose on-demand facts are read (what one file's
        findings depend on beyond `modules`, for the result cache). Answers derived from
        such facts are forgotten, so that every read is seen again."""
        self._running_stat_paths = {}
        self._consulted = set()

    def consulted_modules(self) -> list[str]:
        """The modules whose on-demand facts were read since `start_recording`."""
        return sorted(m for m in self._consulted if m in self.sources)

    def _structure(self, module: str) -> ModuleFacts | None:
        """The module's facts with its class facts and function returns. Most modules'
        classes are never asked about (only what a checkpointed region may reach is), so
        the runner indexes without them and they are extracted here, once, on demand."""
        self._consulted.add(module)
        if module not in self._structured:
            facts = self.modules.get(module)
            if facts is not None and not facts.structured:
                source, is_package = self.sources[module]
                facts = summarize(module, source, is_package, renames=facts.import_renames)
            self._structured[module] = facts
        return self._structured[module]

    def _class(self, qualified: str) -> ClassFacts | None:
        """The facts of the module-level class named by the resolved name `qualified`."""
        module, _, name = qualified.rpartition(".")
        self._consulted.add(module)
        if module not in self._class_tables:
            facts = self._structure(module)
            self._class_tables[module] = {c.name: c for c in facts.class_facts} if facts else {}
        return self._class_tables[module].get(name)

    # -- names ---------------------------------------------------------------------------

    def resolve(self, qualified: str) -> str:
        """Follow re-exports through checked modules: `pkg.checkpoint` -> `torch.utils.checkpoint.checkpoint`."""
        seen = set()
        while qualified not in seen:
            seen.add(qualified)
            module, _, name = qualified.rpartition(".")
            facts = self.modules.get(module)
            if facts is None or not name:
                break
            if name in facts.imports:
                qualified = facts.imports[name]
                continue
            aliases = facts.aliases.get(name, ())
            if len(aliases) == 1 and aliases[0].kind == REF:
                qualified = aliases[0].target
                continue
            if name not in facts.classes and name not in facts.function_returns:
                star = [m for m in facts.star_imports if self._defines(m, name)]
                if star:
                    qualified = f"{star[0]}.{name}"
                    continue
            break
        return qualified

    def _defines(self, module: str, name: str) -> bool:
        """`module` binds `name`, itself or through its own `from ... import *` chain (each
        module visited once, so diamonds of star imports cost linear time)."""
        pending, seen = [module], set()
        while pending:
            current = pending.pop()
            facts = self.modules.get(current)
            if facts is None or current in seen:
                continue
            seen.add(current)
            if name in facts.imports or name in facts.classes or name in facts.function_returns or name in facts.aliases:
                return True
            pending.extend(facts.star_imports)
        return False

    def returns_no_graph(self, module_name: str, dotted: str) -> bool:
        """`dotted(...)`, called in `module_name`, is a checked function whose results never
        hold autograd history (`ModuleFacts.graph_free_functions`)."""
        module, _, name = self.qualify(module_name, dotted).rpartition(".")
        facts = self.modules.get(module)
        return facts is not None and name in facts.graph_free_functions

    def returns_backpropagated(self, module_name: str, dotted: str, position: int | None = None) -> bool:
        """`dotted(...)`, called in `module_name`, is a checked function that returns a value
        it backpropagated (at `position` of the tuple it returns, when given)."""
        module, _, name = self.qualify(module_name, dotted).rpartition(".")
        facts = self.modules.get(module)
        key = name if position is None else f"{name}:{position}"
        return facts is not None and key in facts.backpropagated_returns

    def backpropagates(self, module_name: str, dotted: str) -> bool:
        """`dotted(...)`, called in `module_name`, is a checked function that returns a value
        it backpropagated, whole or in a tuple: a call of it runs a training step."""
        module, _, name = self.qualify(module_name, dotted).rpartition(".")
        facts = self.modules.get(module)
        return facts is not None and any(key.partition(":")[0] == name for key in facts.backpropagated_returns)

    def calls_a_step_helper(self, module_name: str) -> bool:
        """`module_name` calls, with gradients on, a function some checked file defines to
        backpropagate and return its loss (by the callee's name)."""
        if self._step_helpers is None:
            self._step_helpers = frozenset(
                key.partition(":")[0] for facts in self.modules.values() for key in facts.backpropagated_returns
            )
        facts = self.modules.get(module_name)
        return facts is not None and not self._step_helpers.isdisjoint(facts.grad_on_calls)

    def called_outside(self, module_name: str, name: str) -> bool:
        """A checked module other than `module_name` calls or refers to something named `name`."""
        return any(
            name in facts.grad_on_calls or name in facts.grad_off_calls
            for other, facts in self.modules.items()
            if other != module_name
        )

    def only_called_with_grad_off(self, name: str) -> bool:
        """Some checked file calls a function named `name`, and every such call runs with
        gradient recording off (under `no_grad()`, or in a function decorated with it)."""
        if self._calls_by_grad_mode is None:
            grad_on = frozenset(n for facts in self.modules.values() for n in facts.grad_on_calls)
            grad_off = frozenset(n for facts in self.modules.values() for n in facts.grad_off_calls)
            self._calls_by_grad_mode = (grad_on, grad_off)
        grad_on, grad_off = self._calls_by_grad_mode
        return name in grad_off and name not in grad_on

    def qualify(self, module_name: str, dotted: str) -> str:
        """The qualified name a dotted expression `a.b.c` written in `module_name` refers to."""
        head, _, rest = dotted.partition(".")
        facts = self.modules.get(module_name)
        if facts is not None and head in facts.imports:
            base = facts.imports[head]
        elif facts is not None and (
            head in facts.classes
            or head in facts.function_returns
            or head in facts.aliases
            # `from utils import *`: `resolve` follows the star import from here
            or (facts.star_imports and not hasattr(builtins, head))
        ):
            base = f"{module_name}.{head}"
        else:
            base = head
        return self.resolve(f"{base}.{rest}" if rest else base)

    def class_facts(self, qualified: str) -> ClassFacts | None:
        return self._class(self.resolve(qualified))

    def mro(self, qualified: str) -> list[ClassFacts]:
        """The class and its project-defined ancestors, nearest first."""
        order, pending, seen = [], [self.resolve(qualified)], set()
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            facts = self._class(name)
            if facts is not None:
                order.append(facts)
                pending.extend(self.resolve(b) for b in facts.bases)
        return order

    def module_aliases(self, qualified: str) -> tuple[Held, ...]:
        module, _, name = self.resolve(qualified).rpartition(".")
        facts = self.modules.get(module)
        return facts.aliases.get(name, ()) if facts else ()

    # -- running statistics --------------------------------------------------------------

    def running_stat_path(
        self, qualified: str, tracks_running_stats: bool | None = None, state: str = RUNNING_STATS
    ) -> tuple[str, ...] | None:
        """Why a module built from `qualified` updates running statistics in forward (or,
        with `state=OTHER_BUFFERS`, mutates other registered buffers): a path of steps
        ending at the module that does (`("Bottleneck.bn1",)`), `()` when the class itself
        does, or None when it provably does not or is unknown."""
        qualified = self.resolve(qualified)
        if state == OTHER_BUFFERS:
            if qualified in _BUFFER_MUTATING_WRAPPERS:
                return ()
        else:
            if builtin_running_stat_kind(qualified, tracks_running_stats) is not None:
                return ()
            if tracks_running_stats is False:
                return None
        key = (state, qualified)
        if key in self._running_stat_paths:
            return self._running_stat_paths[key]
        self._running_stat_paths[key] = None  # cycle guard
        path = self._compute_running_stat_path(qualified, state)
        self._running_stat_paths[key] = path
        return path

    def _compute_running_stat_path(self, qualified: str, state: str) -> tuple[str, ...] | None:
        chain = self.mro(qualified)
        if not chain:
            # a module-level registry of classes (`NORMS[kind](c)` builds any of them)
            for held in sorted(self.module_aliases(qualified)):
                if held.kind == REF:
                    path = self.running_stat_path(held.target, held.tracks_running_stats, state)
                    if path is not None:
                        return path
            return None
        for facts in chain:
            for base in facts.bases:
                resolved = self.resolve(base)
                if self._class(resolved) is None and builtin_running_stat_kind(resolved, None):
                    return () if state == RUNNING_STATS else None
            running = [b for b in facts.updated_buffers if is_running_stat_buffer(b)]
            if running if state == RUNNING_STATS else len(running) < len(facts.updated_buffers):
                return ()
        if any(facts.keeps_submodules_in_eval for facts in chain):
            return None
        owner = chain[0].name
        for facts in chain:
            for attribute in sorted(facts.attributes):
                if attribute in facts.frozen_attributes:
                    continue
                inner = self.values_path(qualified, facts.attributes[attribute], state=state)
                if inner is not None:
                    step = f"{owner}.{attribute}" if attribute else owner
                    return (step, *inner) if attribute else inner
        return None

    def values_path(
        self, owner_class: str | None, values, depth: int = 0, state: str = RUNNING_STATS
    ) -> tuple[str, ...] | None:
        """The running-stat path of the first value among `values` that has one."""
        if depth > 12:
            return None
        for held in sorted(values):
            if held.kind == BUILT:
                path = self.running_stat_path(held.target, held.tracks_running_stats, state)
                if path is not None:
                    return path
            elif held.kind == RESULT:
                returns = self._function_returns(held.target)
                path = self.values_path(None, returns, depth + 1, state)
                if path is not None:
                    return path
            elif held.kind == PASSED and held.argument in self._stored_parameters(held.target):
                path = self.values_path(None, held.inner, depth + 1, state)
                if path is not None:
                    return path
            elif held.kind == SELF_RESULT and owner_class is not None:
                for facts in self.mro(owner_class):
                    if held.target in facts.method_returns:
                        path = self.values_path(owner_class, facts.method_returns[held.target], depth + 1, state)
                        if path is not None:
                            return path
                        break
        return None

    def _stored_parameters(self, qualified: str) -> tuple[str, ...]:
        for facts in self.mro(qualified):
            if facts.stored_parameters or "__init__" in facts.method_reads:
                return facts.stored_parameters
        return ()

    def _function_returns(self, qualified: str) -> tuple[Held, ...]:
        module, _, name = self.resolve(qualified).rpartition(".")
        facts = self._structure(module)
        return facts.function_returns.get(name, ()) if facts else ()

    def member_path(
        self, class_name: str, member: str, seen: frozenset = frozenset(), state: str = RUNNING_STATS
    ) -> tuple[str, ...] | None:
        """Why running `self.<member>` of an instance of `class_name` (a submodule call or a
        method call) updates running statistics, as a path of steps, or None."""
        if (class_name, member) in seen:
            return None
        seen = seen | {(class_name, member)}
        chain = self.mro(class_name)
        if not chain or any(f.keeps_submodules_in_eval for f in chain):
            return None
        owner = chain[0].name
        for facts in chain:
            if member in facts.method_reads:
                for read in facts.method_reads[member]:
                    inner = self.member_path(class_name, read, seen, state)
                    if inner is not None:
                        return (f"{owner}.{member}", *inner)
                # a property returning a child (`return getattr(self, self.norm1_name)`)
                inner = self.values_path(class_name, facts.method_returns.get(member, ()), state=state)
                return None if inner is None else (f"{owner}.{member}", *inner)
        for facts in chain:
            if member in facts.attributes:
                if member in facts.frozen_attributes:
                    return None
                inner = self.values_path(class_name, facts.attributes[member], state=state)
                if inner is None:
                    return None
                return (f"{owner}.{member}", *inner)
        # never assigned by name: one of the children added under a computed name
        # (`self.add_module(*stage)`, `setattr(self, name, ...)`)
        if member in MODULE_OWN_ATTRIBUTES:
            return None  # `self.training`: a flag, not one of the children
        for facts in chain:
            if "" in facts.attributes and all(member not in f.named_members for f in chain):
                inner = self.values_path(class_name, facts.attributes[""], state=state)
                if inner is not None:
                    return (f"{owner}.{member}", *inner)
        return None


# ---------------------------------------------------------------------------------------
# Phase 1: per-file extraction
# ---------------------------------------------------------------------------------------


def summarize(
    module_name: str,
    source: bytes,
    is_package: bool = False,
    structure: bool = True,
    renames: tuple[tuple[str, str], ...] = (),
    tree: ast.Module | None = None,
) -> ModuleFacts:
    """Facts for one file (`is_package`: it is a package's `__init__.py`, the base of its
    relative imports); with `structure=False`, without the class facts and function returns
    (over half the cost), which `ProjectIndex` then extracts when it needs them; `renames`:
    top-level modules its imports mean under another name (see `separate_roots`); `tree`: the
    file's `parse_any` tree where the caller has it. Raises SyntaxError (or ValueError for NUL
    bytes) when it does not parse."""
    renamed = dict(renames)

    def absolute(name: str) -> str:
        top, dot, rest = name.partition(".")
        return f"{renamed[top]}{dot}{rest}" if top in renamed else name

    tree = tree or parse_any(source)
    nodes = _walk(tree)  # walked once; each structural fact below reads the kinds it needs
    of_kind: dict[type, list[ast.AST]] = {}
    for node in nodes:
        of_kind.setdefault(type(node), []).append(node)

    def kinds(*wanted: type) -> list[ast.AST]:
        return [node for kind in wanted for node in of_kind.get(kind, ())]

    imports: dict[str, str] = {}
    star_imports: list[str] = []
    package = module_name if is_package else module_name.rpartition(".")[0]
    # in walk order: a later import of a name replaces an earlier one
    for node in (n for n in nodes if type(n) is ast.Import or type(n) is ast.ImportFrom):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = absolute(alias.name)
                else:
                    top = alias.name.partition(".")[0]
                    imports[top] = absolute(top)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_module(package, node.module, node.level)
            base = absolute(base) if node.level == 0 else base
            for alias in node.names:
                if alias.name == "*":
                    star_imports.append(base)
                else:
                    imports[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [
        node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    scope = ModuleScope(module_name, imports, set(classes), {f.name for f in functions}, bool(star_imports))
    function_returns = {f.name: LocalValues(scope, f).returns() if structure else () for f in functions}
    aliases: dict[str, tuple[Held, ...]] = {}
    module_env = LocalValues(scope, None)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            refs = module_env.references(node.value)
            if refs:
                aliases[node.targets[0].id] = tuple(sorted(refs))
                scope.aliases.add(node.targets[0].id)
            if isinstance(node.value, ast.Dict):
                # a registry: each entry by its key too, for lookups with a known key
                for key, value in zip(node.value.keys, node.value.values):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str) and _REGISTRY_KEY.fullmatch(key.value):
                        entry = module_env.references(value)
                        if entry:
                            aliases[f"{node.targets[0].id}[{key.value}]"] = tuple(sorted(entry))
    class_facts = tuple(
        _summarize_class(scope, node) for node in tree.body if structure and isinstance(node, ast.ClassDef)
    )
    # Every entry point's name contains "checkpoint" and `uses_checkpointing` reads these
    # names only after finding that word in the text it searched: the source itself when
    # ASCII, its NFKC form otherwise (which may add ASCII the bytes lack).
    mentions_checkpoint = b"checkpoint" in source or not source.isascii()
    names = kinds(ast.Name, ast.Attribute)
    trains = calls_backward(names + kinds(ast.Call)) or any(
        f.name in STEP_HOOKS for f in kinds(ast.FunctionDef, ast.AsyncFunctionDef)
    )
    numeric_names = frozenset(
        local for local, qualified in imports.items() if qualified.partition(".")[0] in ARRAY_LIBRARIES
    )
    calls = grad_mode_calls(tree, imports)
    return ModuleFacts(
        module_name,
        imports,
        tuple(classes),
        class_facts,
        function_returns,
        aliases,
        tuple(star_imports),
        may_hold_recurrence(kinds(ast.For, ast.AsyncFor, ast.comprehension, ast.Assign, ast.AugAssign, ast.Call), trains),
        may_hold_momentum_correction(kinds(ast.BinOp)),
        may_hold_loop_update(kinds(ast.For, ast.AsyncFor, ast.DictComp, ast.ListComp)),
        trains,
        read_names(names, scope) if mentions_checkpoint else (),
        structure,
        tuple(f.name for f in functions if returns_no_graph(f, numeric_names)),
        tuple(renames),
        tuple(sorted(calls.grad_on)),
        tuple(sorted(calls.grad_off)),
        tuple(
            f"{f.name}:{position}" if position else f.name
            for f in functions
            for position in backpropagated_returns(f)
        ),
    )


def _walk(tree: ast.AST) -> list[ast.AST]:
    """`list(ast.walk(tree))`, same order, about twice as fast: no generators per node."""
    nodes = [tree]
    for node in nodes:  # grows while iterated: breadth first, as `ast.walk`
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                nodes.append(value)
            elif isinstance(value, list):
                nodes.extend(item for item in value if isinstance(item, ast.AST))
    return nodes


def read_names(nodes: list[ast.AST], scope: "ModuleScope") -> tuple[str, ...]:
    """Qualified names of the names and attribute chains (each prefix too) read anywhere,
    sorted: facts pickle the same for the same source (the result cache's key)."""
    dotted = set()
    for node in nodes:
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            name = dotted_name(node)
            if name is not None:
                dotted.add(name)
    return tuple(sorted({scope.qualify(name) for name in dotted}))


def calls_backward(nodes: list[ast.AST]) -> bool:
    """Something named `backward` is referenced (every training step calls one), or
    `autograd.grad` (which backpropagates too), or a step helper is handed an optimizer
    (`net.train_step(loss, self.optim)` backpropagates `loss`). Reads the `Name`,
    `Attribute` and `Call` nodes among `nodes`."""
    return any(
        (isinstance(node, ast.Attribute) and node.attr == "backward")
        or (isinstance(node, ast.Name) and node.id == "backward")
        or (isinstance(node, ast.Attribute) and node.attr == "grad" and isinstance(node.value, ast.Name) and node.value.id == "autograd")
        or (isinstance(node, ast.Attribute) and node.attr == "grad" and isinstance(node.value, ast.Attribute) and node.value.attr == "autograd")
        or (isinstance(node, ast.Call) and _steps_a_given_optimizer(node))
        for node in nodes
    )


def _steps_a_given_optimizer(call: ast.Call) -> bool:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if "step" not in name:
        return False
    for argument in [*call.args, *(k.value for k in call.keywords)]:
        while isinstance(argument, ast.Subscript):
            argument = argument.value
        last = argument.attr if isinstance(argument, ast.Attribute) else getattr(argument, "id", "")
        if isinstance(last, str) and OPTIMIZER_NAME.search(last.lower()):
            return True
    return False


def may_hold_momentum_correction(nodes: list[ast.AST]) -> bool:
    """A structural superset of EMA102's `1 - sqrt(d)` / `1 - d ** 0.5` / `1 - pow(d, 0.5)`:
    a subtraction from the number 1 of a power or of a call to something named `sqrt`,
    `pow` or `power` (the names EMA102's `_square_root_of` accepts, from any module).
    Attention scaling (`d ** -0.5`), `1 - torch.exp(...)` and `gradient_checkpointing`
    flags, everywhere in model code, do not have this shape."""
    return any(
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Sub)
        and isinstance(node.left, ast.Constant)
        and type(node.left.value) in (int, float)
        and node.left.value == 1
        and (_calls_square_root(node.right) or (isinstance(node.right, ast.BinOp) and isinstance(node.right.op, ast.Pow)))
        for node in nodes
    )


def _calls_square_root(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in ("sqrt", "pow", "power")


def may_hold_recurrence(nodes: list[ast.AST], trains: bool) -> bool:
    """A loose, structural superset of the statements the EMA2xx/EMA301 recognisers accept
    (`analysis/recurrences.py`, `_Shapes`): an assignment of a step-shaped value (see
    `_step_shaped`) whose target reappears in it, `+=`/`-=` of a product the target
    reappears in (`w * (x - avg)`) or on a target that was scaled (`*=`, `.mul_`), or an
    in-place step call (`lerp_`; `copy_` mentioning its receiver; `add_`/`sub_` of one product
    mentioning it; `add_` to a scaled receiver). A plain-name target counts only where such a
    name can be state: a `for` target (an EMA loop's tensor), or any name in a file that calls
    something named `backward` (a variable carried across a training loop); a forward's
    `x = x + f(x)` is neither. Compared as `ast.dump`, which ignores spacing and parentheses,
    so it is looser than the recognisers' textual comparison, never stricter. Most files have
    no such statement and skip libcst for these rules. `trains`: `calls_backward(nodes)`."""
    loop_names = {
        name.id
        for node in nodes
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension))
        for name in ast.walk(node.target)
        if isinstance(name, ast.Name)
    }

    def can_be_state(target: ast.AST) -> bool:
        return not isinstance(target, ast.Name) or trains or target.id in loop_names

    scaled: set[str] = set()
    increments: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Assign):
            if (
                len(node.targets) == 1
                and _step_shaped(node.value)
                and can_be_state(node.targets[0])
                and _appears_in(_plain_dump(_whole_tensor_base(node.targets[0])), node.value)
            ):
                return True
        elif isinstance(node, ast.AugAssign) and can_be_state(node.target):
            target = _plain_dump(node.target)
            if isinstance(node.op, ast.Mult):
                scaled.add(target)
            elif isinstance(node.op, (ast.Add, ast.Sub)):
                # without a scaling before it, the step is `+= w * (x - avg)` / `-= w * (avg - x)`
                if _is_product(node.value) and _appears_in(target, node.value):
                    return True
                increments.append(target)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, node.func.value
            if method == "lerp_":
                return True
            if method == "mul_":
                scaled.add(_plain_dump(receiver))
            elif method in ("copy_", "add_", "sub_"):
                # a recognised `copy_` step mentions its receiver in its argument; an `add_` /
                # `sub_` step takes one product mentioning it (`w * (x - avg)`), or adds to a
                # receiver that was scaled first
                state = _plain_dump(receiver)
                if method == "copy_":
                    if any(_appears_in(state, arg) for arg in node.args):
                        return True
                elif len(node.args) == 1 and _is_product(node.args[0]) and _appears_in(state, node.args[0]):
                    return True
                if method == "add_" and isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute) and receiver.func.attr == "mul_":
                    return True
                if method == "add_":
                    increments.append(state)
    return any(target in scaled for target in increments)


def may_hold_loop_update(loops: list[ast.AST]) -> bool:
    """A structural superset of the statements `analysis.model_ema_loops` accepts: inside a
    `for` loop, a write (an in-place tensor method, an augmented assignment, a store to
    `.data` or a subscript, or an EMA-named helper's argument) to something that changes
    with the iteration: rooted at a name the loop binds (a loop variable, or a name assigned
    in its body), or a lookup keyed by one (`esd[k]`). A dict or list comprehension may hold
    a weight average (`analysis.averaging_comprehensions`) when its element adds something to
    a name its generators bind."""
    for loop in loops:
        if isinstance(loop, (ast.DictComp, ast.ListComp)):
            if _adds_per_iteration(loop):
                return True
            continue
        bound: set[str] = set()
        # the values the loop assigns to plain names, which a store may read through
        temporaries: dict[str, list[ast.AST]] = {}
        for node in ast.walk(loop):
            if isinstance(node, (ast.For, ast.AsyncFor, ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    bound.update(name.id for name in ast.walk(target) if isinstance(name, ast.Name))
                    if isinstance(node, ast.Assign) and isinstance(target, ast.Name):
                        temporaries.setdefault(target.id, []).append(node.value)
        for statement in loop.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                    if _reads_a_name(node.value) and _follows(node.target, bound):
                        return True
                elif isinstance(node, ast.Assign):
                    if _reads_a_name(node.value) and any(
                        (isinstance(t, ast.Subscript) or (isinstance(t, ast.Attribute) and t.attr == "data"))
                        and _follows(t, bound)
                        and _averages_into(t, node.value, temporaries)
                        for t in node.targets
                    ):
                        return True
                elif isinstance(node, ast.Call):
                    if isinstance(node.func, ast.Attribute) and node.func.attr in IN_PLACE_METHODS:
                        if _follows(node.func.value, bound):
                            return True
                        continue
                    if any(k.arg == "out" and _follows(k.value, bound) for k in node.keywords):
                        return True  # `torch.lerp(t, s, w, out=t)`
                    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    if any(word in name.lower() for word in EMA_HELPER_WORDS) and any(
                        _follows(argument, bound) for argument in node.args
                    ):
                        return True
    return False


def _adds_per_iteration(comprehension: ast.DictComp | ast.ListComp) -> bool:
    """The element adds two or more terms that read a name the comprehension binds, one of
    them a product or quotient (a weight): what `averaging_comprehensions` accepts, and more."""
    bound = {n.id for g in comprehension.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
    element = comprehension.value if isinstance(comprehension, ast.DictComp) else comprehension.elt
    terms: list[ast.AST] = []
    pending = [element]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            pending += [node.left, node.right]
        else:
            terms.append(node)
    reading = [t for t in terms if any(isinstance(n, ast.Name) and n.id in bound for n in ast.walk(t))]
    return len(reading) >= 2 and any(isinstance(t, ast.BinOp) and isinstance(t.op, (ast.Mult, ast.Div)) for t in reading)


_WEIGHING_CALLS = frozenset({"lerp", "lerp_", "mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "addcmul"})


def _averages_into(target: ast.AST, value: ast.AST, temporaries: dict[str, list[ast.AST]]) -> bool:
    """What `model_ema_loops` asks of `target = value` (a store, not an in-place method): the
    new value keeps part of the old one and weighs it, so `value`, with the `temporaries` it
    reads from the loop's own assignments, reads `target`'s root name and holds arithmetic,
    a weighing call or an EMA-named helper (`out[i] = f(x)` and dict fills hold neither)."""
    root = target
    while isinstance(root, (ast.Attribute, ast.Subscript)):
        root = root.value
    if not isinstance(root, ast.Name):
        return True
    reads_target = weighs = False
    pending, seen = [value], set()
    while pending:
        for node in ast.walk(pending.pop()):
            if isinstance(node, ast.BinOp):
                weighs = True
            elif isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in _WEIGHING_CALLS or any(word in name.lower() for word in EMA_HELPER_WORDS):
                    weighs = True
            elif isinstance(node, ast.Name):
                reads_target = reads_target or node.id == root.id
                if node.id in temporaries and node.id not in seen:
                    seen.add(node.id)
                    pending.extend(temporaries[node.id])
    return reads_target and weighs


def _follows(target: ast.AST, bound: set[str]) -> bool:
    """`target` is rooted at one of `bound`, or is looked up by one (`d[k]`, `e.data[:]`)."""
    while True:
        if isinstance(target, ast.Name):
            return target.id in bound
        if isinstance(target, ast.Subscript):
            if any(isinstance(n, ast.Name) and n.id in bound for n in ast.walk(target.slice)):
                return True
            target = target.value
        elif isinstance(target, ast.Attribute):
            target = target.value
        elif isinstance(target, ast.Call):
            target = target.func
        else:
            return False


def _reads_a_name(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.Name) for sub in ast.walk(node))


def _step_shaped(value: ast.AST) -> bool:
    """The value forms an EMA step can take (`_Shapes.value_recurrence`): `lerp`; a sum
    with a product on either side (`d * avg + (1 - d) * x`, `avg + w * (x - avg)`) or a
    difference taking a product (`avg - w * (avg - x)`), since every such step scales the
    state or a difference; or either in a conditional expression's branch."""
    if isinstance(value, ast.IfExp):
        return _step_shaped(value.body) or _step_shaped(value.orelse)
    if isinstance(value, ast.BinOp):
        if isinstance(value.op, ast.Add):
            return _is_product(value.left) or _is_product(value.right)
        return isinstance(value.op, ast.Sub) and _is_product(value.right)
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "lerp"


def _is_product(node: ast.AST) -> bool:
    """`a * b` or `a.mul(b)`: what `_factors` in the recognisers splits."""
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, ast.Mult)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mul"


def _plain_dump(node: ast.AST) -> str:
    """Structure without context or positions: `self.avg` loaded and stored dump alike."""
    return re.sub(r"(Load|Store|Del)\(\)", "", ast.dump(node, annotate_fields=False, include_attributes=False))


def _openmmlab_bn_block(target: str) -> bool:
    """`mmdet.models.backbones.resnet.BasicBlock` and its kind, imported from an OpenMMLab
    package (a tree that defines its own is read like any class)."""
    return target.partition(".")[0] in OPENMMLAB_PACKAGES and target.rpartition(".")[2] in OPENMMLAB_BN_BLOCKS


def _whole_tensor_base(target: ast.AST) -> ast.AST:
    """`avg` for `avg[:]` / `avg[...]`: writing every element writes the tensor itself."""
    if isinstance(target, ast.Subscript):
        part = target.slice
        if (isinstance(part, ast.Slice) and part.lower is None and part.upper is None and part.step is None) or (
            isinstance(part, ast.Constant) and part.value is Ellipsis
        ):
            return target.value
    return target


def _appears_in(target: str, value: ast.AST) -> bool:
    return any(_plain_dump(node) == target for node in ast.walk(value))


@dataclass
class ModuleScope:
    module_name: str
    imports: dict[str, str]
    classes: set[str]
    functions: set[str]
    # a module with `from x import *` may get any unknown name from there: such names are
    # qualified in this module, and `ProjectIndex.resolve` follows the star import
    has_star_imports: bool = False
    # module-level names bound to references (`NORMS = {"bn": nn.BatchNorm2d}`)
    aliases: set[str] = field(default_factory=set)

    def qualify(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        if head in self.imports:
            base = self.imports[head]
        elif head in self.classes or head in self.functions or head in self.aliases:
            base = f"{self.module_name}.{head}"
        elif self.has_star_imports and not hasattr(builtins, head):
            base = f"{self.module_name}.{head}"
        else:
            base = head
        return f"{base}.{rest}" if rest else base


def dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _literal_bool(call: ast.Call, keyword: str) -> bool | None:
    for kw in call.keywords:
        if kw.arg == keyword and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool):
            return kw.value.value
    return None


def _self_name(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    args = function.args.posonlyargs + function.args.args
    return args[0].arg if args else None


class LocalValues:
    """Flow-insensitive values of the local names of one function (or of module level)."""

    def __init__(self, scope: ModuleScope, function, self_name: str | None = None, attributes=None) -> None:
        self.scope = scope
        self.function = function
        self.self_name = self_name
        self.attributes = attributes  # the class's attribute table, filled by _summarize_class
        self.bindings: dict[str, list[tuple[str, ast.AST]]] = {}
        self.definitions: dict[str, list[ast.AST]] = {}  # nested `def`s and lambdas bound to names
        self._evaluating: set[str] = set()
        self._memo: dict[str, frozenset[Held]] = {}
        if function is not None:
            self._collect(function)

    def _bind(self, name: str, how: str, node: ast.AST) -> None:
        self.bindings.setdefault(name, []).append((how, node))

    def _collect(self, function) -> None:
        if isinstance(function, ast.Module):
            arguments = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        else:
            arguments = function.args
        positional = arguments.posonlyargs + arguments.args
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        for arg, default in [*zip(positional, defaults), *zip(arguments.kwonlyargs, arguments.kw_defaults)]:
            if default is not None:
                self._bind(arg.arg, "value", default)
            if arg.annotation is not None:
                self._bind(arg.arg, "annotation", arg.annotation)
        for node in _walk_own_body(function):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.definitions.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind_target(target, node.value)
                    if isinstance(target, ast.Name) and isinstance(node.value, ast.Lambda):
                        self.definitions.setdefault(target.id, []).append(node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                self._bind_target(node.target, node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                self._bind_target(node.target, node.iter, element=True)
            elif isinstance(node, ast.NamedExpr):
                self._bind_target(node.target, node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if isinstance(owner, ast.Name) and node.func.attr in ("append", "extend", "insert", "add_module"):
                    for arg in node.args:
                        self._bind(owner.id, "value", arg)

    def _bind_target(self, target: ast.AST, value: ast.AST, element: bool = False) -> None:
        if isinstance(target, ast.Name):
            self._bind(target.id, "value", value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            # `for i, block in enumerate(blocks)` and `a, b = f()`: each name may take
            # anything the value holds; precise unpacking is not worth its cost here
            for item in target.elts:
                self._bind_target(item.value if isinstance(item, ast.Starred) else item, value, element)
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            self._bind(target.value.id, "value", value)

    def local(self, name: str) -> frozenset[Held]:
        if name in self._memo:
            return self._memo[name]
        if name in self._evaluating:
            return frozenset()
        self._evaluating.add(name)
        values: set[Held] = set()
        for how, node in self.bindings.get(name, ()):
            values |= self.annotation(node) if how == "annotation" else self.values(node)
        self._evaluating.discard(name)
        self._memo[name] = frozenset(values)
        return self._memo[name]

    def annotation(self, node: ast.AST) -> frozenset[Held]:
        """Classes named in a parameter annotation (`Type[Bottleneck]`, `Union[A, B]`)."""
        values = set()
        pending = [node]
        while pending:
            sub = pending.pop()
            if not isinstance(sub, (ast.Name, ast.Attribute)):
                pending.extend(ast.iter_child_nodes(sub))
            else:
                dotted = dotted_name(sub)
                if dotted and dotted.partition(".")[0] not in ("typing", "Type", "Union", "Optional", "Callable"):
                    qualified = self.scope.qualify(dotted)
                    if qualified.startswith(self.scope.module_name + ".") or "." in qualified:
                        values.add(Held(REF, qualified))
        return frozenset(values)

    def references(self, node: ast.AST) -> frozenset[Held]:
        """The classes or factories an expression may name (not call)."""
        if isinstance(node, ast.Name) and self.function is not None and node.id in self.bindings:
            return frozenset(h for h in self.local(node.id) if h.kind == REF)
        dotted = dotted_name(node)
        if dotted is not None:
            if self.self_name and dotted.startswith(self.self_name + ".") and self.attributes is not None:
                attribute = dotted.split(".")[1]
                return frozenset(h for h in self.attributes.get(attribute, ()) if h.kind == REF)
            return frozenset({Held(REF, self.scope.qualify(dotted))})
        if isinstance(node, ast.BoolOp):
            return frozenset().union(*(self.references(v) for v in node.values))
        if isinstance(node, ast.IfExp):
            return self.references(node.body) | self.references(node.orelse)
        # registries: `NORMS = {"bn": nn.BatchNorm2d, ...}`, then `NORMS[kind](c)`
        if isinstance(node, ast.Dict):
            return frozenset().union(*(self.references(v) for v in node.values if v is not None))
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return frozenset().union(*(self.references(e) for e in node.elts))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            return self._entries(node.value, node.slice)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Dict)
            and node.args
        ):
            # `{"batch": nn.BatchNorm1d, ...}.get(kind, default)`
            default = self.references(node.args[1]) if len(node.args) > 1 else frozenset()
            return self._entries(node.func.value, node.args[0]) | default
        if isinstance(node, ast.Subscript):
            registry = self.references(node.value)
            keys = self._registry_keys(node.slice)
            if keys is None:
                return registry
            return frozenset(Held(REF, f"{held.target}[{key}]") for held in registry for key in keys)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            named = _BATCH_NORM_NAMES.get(node.value.replace("_", "").lower().split("-")[0])
            return frozenset({Held(REF, named)}) if named else frozenset()
        if isinstance(node, ast.Call) and self._callee_is(node, NORM_LAYER_FACTORIES) and node.args:
            return frozenset(h for h in self.values(node.args[0]) if h.kind == REF)
        if isinstance(node, ast.Call) and self._callee_is(node, PARTIAL) and node.args:
            tracks = _literal_bool(node, "track_running_stats")
            return frozenset(
                Held(REF, h.target, tracks if tracks is not None else h.tracks_running_stats)
                for h in self.references(node.args[0])
            )
        return frozenset()

    def _entries(self, registry: ast.Dict, key: ast.AST) -> frozenset[Held]:
        """What a lookup of `key` in a dict literal may name: the entries under the keys it
        can hold, or every entry when those are not known (entries under a computed key,
        `{BATCH: nn.BatchNorm1d}`, or a `**spread`, may match any key)."""
        keys = self._registry_keys(key)
        entries = [
            value
            for name, value in zip(registry.keys, registry.values)
            if keys is None or not isinstance(name, ast.Constant) or name.value in keys
        ]
        return frozenset().union(*(self.references(value) for value in entries))

    def _registry_keys(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """The keys a registry lookup can use: a string constant, or a name bound only to
        string constants (a parameter's default included); None when not known (also for a
        name bound through itself, `kind = kinds[kind]`)."""
        if isinstance(node, ast.Constant):
            return {node.value} if isinstance(node.value, str) and _REGISTRY_KEY.fullmatch(node.value) else None
        if isinstance(node, ast.Name) and self.function is not None and node.id in self.bindings:
            if node.id in seen:
                return None
            keys: set[str] = set()
            for bound in (bound for how, bound in self.bindings[node.id] if how == "value"):
                found = self._registry_keys(bound, seen | {node.id})
                if found is None:
                    return None
                keys |= found
            return keys or None
        return None

    def _callee_is(self, call: ast.Call, names: frozenset[str]) -> bool:
        dotted = dotted_name(call.func)
        return dotted is not None and self.scope.qualify(dotted) in names

    def values(self, node: ast.AST) -> frozenset[Held]:
        """What an expression may evaluate to: references, built modules, call results."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Dict):
            # `{"batch": nn.BatchNorm1d}.get(kind)` names a class; it does not call one
            return self.references(node)
        if isinstance(node, ast.Call):
            return self._call_values(node)
        if isinstance(node, ast.Name):
            if self.function is not None and node.id in self.bindings:
                return self.local(node.id)
            return self.references(node)
        if isinstance(node, ast.Constant):
            return self.references(node)
        if isinstance(node, ast.Attribute):
            attribute = _self_attribute(node, self.self_name)
            if attribute is not None and self.attributes is not None:
                return self.attributes.get(attribute)
            return self.references(node)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return frozenset().union(*(self.values(e) for e in node.elts))
        if isinstance(node, ast.Dict):
            return frozenset().union(*(self.values(v) for v in node.values))
        if isinstance(node, ast.Starred):
            return self.values(node.value)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            return self.values(node.elt)
        if isinstance(node, ast.DictComp):
            return self.values(node.value)
        if isinstance(node, ast.BoolOp):
            return frozenset().union(*(self.values(v) for v in node.values))
        if isinstance(node, ast.IfExp):
            return self.values(node.body) | self.values(node.orelse)
        if isinstance(node, ast.Subscript):
            if self._registry_keys(node.slice) is not None:
                keyed = self.references(node)
                if keyed:
                    return keyed
            return self.values(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.values(node.left) | self.values(node.right)
        return frozenset()

    def _call_values(self, call: ast.Call) -> frozenset[Held]:
        func = call.func
        if self._callee_is(call, PARTIAL) or self._callee_is(call, NORM_LAYER_FACTORIES):
            return self.references(call)
        callee = (dotted_name(func) or "").rpartition(".")[2]
        if (
            isinstance(func, ast.Name)
            and func.id == "getattr"
            and len(call.args) >= 2
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id == self.self_name
            and self.attributes is not None
        ):
            # `getattr(self, self.norm1_name)`: a child added under a computed name
            name = call.args[1]
            return self.attributes.get(name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else "")
        if callee == OPENMMLAB_NORM_FACTORY:
            config = call.args[0] if call.args else _keyword(call, "cfg")
            return _OPENMMLAB_BATCH_NORM if config is not None and self._batch_norm_config(config) else frozenset()
        if (
            self.self_name
            and isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == self.self_name
        ):
            attribute_refs = self.references(func)
            built = {Held(BUILT, h.target, h.tracks_running_stats) for h in attribute_refs}
            return frozenset(built | {Held(SELF_RESULT, func.attr)})
        refs = self.references(func)
        tracks = _literal_bool(call, "track_running_stats")
        values: set[Held] = set()
        for ref in refs:
            if ref.target in CONTAINERS:
                for arg in [*call.args, *(kw.value for kw in call.keywords)]:
                    values |= self.values(arg)
                continue
            if "." not in ref.target:
                continue  # a builtin (`float`, `int`): never a module
            given = tracks if tracks is not None else ref.tracks_running_stats
            values.add(Held(BUILT, ref.target, given))
            if not ref.target.startswith("torch."):
                values.add(Held(RESULT, ref.target))
                values |= self._passed_modules(ref.target, call)
        if isinstance(func, ast.Attribute) and func.attr in ("children", "modules", "values", "items"):
            values |= self.values(func.value)
        if any(_openmmlab_bn_block(ref.target) for ref in refs):
            config = _keyword(call, "norm_cfg")
            if config is None or self._batch_norm_config(config):
                values |= _OPENMMLAB_BATCH_NORM
        if callee in OPENMMLAB_CONV_MODULES:
            config = _keyword(call, "norm_cfg")
            if config is None and len(call.args) > OPENMMLAB_NORM_CFG_POSITION:
                config = call.args[OPENMMLAB_NORM_CFG_POSITION]
            if config is not None and self._batch_norm_config(config):
                values |= _OPENMMLAB_BATCH_NORM
        return frozenset(values)

    def _batch_norm_config(self, node: ast.AST, depth: int = 0) -> bool:
        """Whether an OpenMMLab norm config may name a BatchNorm: a `dict(type=...)` or
        `{"type": ...}` literal, or a local name (a parameter's default included) bound to
        one, through `copy.deepcopy`, `dict(cfg)` and `cfg.copy()`."""
        if depth > 4:
            return False
        if isinstance(node, ast.Dict):
            return any(
                isinstance(k, ast.Constant) and k.value == "type" and _constant_in(v, BATCH_NORM_CONFIG_TYPES)
                for k, v in zip(node.keys, node.values)
            )
        if isinstance(node, ast.Call):
            kind = _keyword(node, "type")
            if kind is not None and _constant_in(kind, BATCH_NORM_CONFIG_TYPES):
                return True
            if node.args and (dotted_name(node.func) or "").rpartition(".")[2] in ("dict", "deepcopy", "copy"):
                return self._batch_norm_config(node.args[0], depth + 1)
            if isinstance(node.func, ast.Attribute) and node.func.attr == "copy":
                return self._batch_norm_config(node.func.value, depth + 1)
            return False
        if isinstance(node, ast.Name):
            return any(
                how == "value" and self._batch_norm_config(bound, depth + 1)
                for how, bound in self.bindings.get(node.id, ())
            )
        attribute = _self_attribute(node, self.self_name)
        if attribute is not None and isinstance(self.attributes, _AttributeTable):
            # `self.norm_cfg = norm_cfg` in `__init__`, read by a `ConvModule(...)` later
            return any(
                evaluator._batch_norm_config(value, depth + 1) for value, evaluator in self.attributes.raw.get(attribute, ())
            )
        return False

    def _passed_modules(self, target: str, call: ast.Call) -> set[Held]:
        passed = set()
        arguments = [(str(i), a) for i, a in enumerate(call.args) if not isinstance(a, ast.Starred)]
        arguments += [(kw.arg, kw.value) for kw in call.keywords if kw.arg]
        for argument, node in arguments:
            if isinstance(node, (ast.Call, ast.Name, ast.Attribute, ast.List, ast.Tuple)):
                inner = tuple(sorted(h for h in self.values(node) if h.kind in (BUILT, RESULT, PASSED)))
                if inner:
                    passed.add(Held(PASSED, target, argument=argument, inner=inner))
        return passed

    def returns(self) -> tuple[Held, ...]:
        values: set[Held] = set()
        for node in _walk_own_body(self.function):
            if isinstance(node, ast.Return) and node.value is not None:
                values |= self.values(node.value)
        return tuple(sorted(values))


_OPENMMLAB_BATCH_NORM = frozenset({Held(BUILT, "torch.nn.BatchNorm2d")})
# Words a module holding a running-stat or buffer-writing layer names somewhere.
_STATEFUL_WORDS = {
    RUNNING_STATS: (b"BatchNorm", b"batch_norm", b"InstanceNorm", b"SyncBN", b"norm_cfg"),
    OTHER_BUFFERS: (b"spectral_norm", b"register_buffer"),
}
_CLASS_HEADER = re.compile(rb"^[ \t]*class[ \t]+(\w+)[ \t]*\(([^)]*)\)", re.MULTILINE)
_REGISTRY_KEY = re.compile(r"[\w-]+")


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _constant_in(node: ast.AST, values: frozenset[str]) -> bool:
    return isinstance(node, ast.Constant) and node.value in values


def _flags_off_by_default(methods) -> set[str]:
    """`self.norm_eval` for `def __init__(self, ..., norm_eval=False): self.norm_eval = norm_eval`
    (or a literal `False`/`None`/`0`): instance flags that are off unless a caller turns them on."""
    init = next((m for m in methods if m.name == "__init__"), None)
    if init is None:
        return set()
    self_name = _self_name(init)
    positional = init.args.posonlyargs + init.args.args
    defaults = dict(zip([a.arg for a in positional[len(positional) - len(init.args.defaults) :]], init.args.defaults))
    defaults.update({a.arg: d for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults) if d is not None})
    off = set()
    for sub in ast.walk(init):
        if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
            owner = _self_attribute(sub.targets[0], self_name)
            value = defaults.get(sub.value.id) if isinstance(sub.value, ast.Name) else sub.value
            if owner and isinstance(value, ast.Constant) and not value.value:
                off.add(owner)
    return off


def _puts_modules_in_eval(train, self_name: str | None, off: set[str]) -> bool:
    """A `train` override calls `.eval()` on submodules, other than under a test of a flag that
    is off by default (`if mode and self.norm_eval:` with `norm_eval=False`)."""

    def tests_an_off_flag(test: ast.AST) -> bool:
        return any(_self_attribute(n, self_name) in off for n in ast.walk(test) if isinstance(n, ast.Attribute))

    pending = [(statement, False) for statement in train.body]
    while pending:
        node, guarded = pending.pop()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "eval" and not guarded:
            return True
        if isinstance(node, ast.If):
            off_here = guarded or tests_an_off_flag(node.test)
            pending += [(child, off_here) for child in node.body]
            pending += [(child, guarded) for child in node.orelse]
            continue
        pending += [(child, guarded) for child in ast.iter_child_nodes(node)]
    return False


def _walk_own_body(function):
    """Nodes of a function body, not descending into nested classes (their own scope)."""
    pending = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.ClassDef):
                pending.append(child)


_UPDATING_METHODS = frozenset(
    {"add_", "mul_", "sub_", "div_", "lerp_", "copy_", "fill_", "zero_", "addcmul_", "addcdiv_", "clamp_", "update"}
)
_FUNCTIONAL_BATCH_NORM = frozenset({"torch.nn.functional.batch_norm", "torch.batch_norm", "torch.nn.functional.instance_norm"})


def _summarize_class(scope: ModuleScope, node: ast.ClassDef) -> ClassFacts:
    bases = tuple(scope.qualify(d) for d in (dotted_name(b) for b in node.bases) if d)
    methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
    raw: dict[str, list[tuple[ast.AST, LocalValues]]] = {}
    attributes = _AttributeTable(raw)
    evaluators = []
    buffers: set[str] = set()
    eval_calls: set[str] = set()
    frozen_grads: set[str] = set()
    method_reads: dict[str, tuple[str, ...]] = {}
    written: dict[str, set[str]] = {}
    keeps_eval = False
    for method in methods:
        self_name = _self_name(method)
        evaluator = LocalValues(scope, method, self_name, attributes)
        evaluators.append(evaluator)
        reads: set[str] = set()
        writes: set[str] = set()
        for sub in ast.walk(method):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == self_name:
                if isinstance(sub.ctx, ast.Load):
                    reads.add(sub.attr)
                else:
                    writes.add(sub.attr)
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    # `name, self.bn = build_norm_layer(...)`: each element may take the value,
                    # except the name `build_norm_layer` returns first
                    elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
                    if len(elements) == 2 and isinstance(sub.value, ast.Call) and (
                        (dotted_name(sub.value.func) or "").rpartition(".")[2] == OPENMMLAB_NORM_FACTORY
                    ):
                        elements = elements[1:]
                    for element in elements:
                        owner = _self_attribute(element, self_name)
                        if owner:
                            raw.setdefault(owner, []).append((sub.value, evaluator))
            elif isinstance(sub, ast.AugAssign):
                owner = _self_attribute(sub.target, self_name)
                if owner:
                    writes.add(owner)
            elif isinstance(sub, ast.Call):
                _class_call_facts(sub, self_name, evaluator, raw, buffers, eval_calls, frozen_grads, writes, scope)
        if method.name == "train":
            keeps_eval = _puts_modules_in_eval(method, self_name, _flags_off_by_default(methods))
        method_reads[method.name] = tuple(sorted(reads - {method.name}))
        written[method.name] = writes
    method_returns = {m.name: e.returns() for m, e in zip(methods, evaluators)}
    return ClassFacts(
        name=node.name,
        qualified_name=f"{scope.module_name}.{node.name}",
        bases=bases,
        attributes={name: tuple(sorted(attributes.get(name))) for name in raw if attributes.get(name)},
        method_reads=method_reads,
        method_returns=method_returns,
        updated_buffers=tuple(sorted(_forward_updates(buffers, method_reads, written))),
        frozen_attributes=tuple(sorted(eval_calls & frozen_grads)),
        keeps_submodules_in_eval=keeps_eval,
        named_members=tuple(sorted(set(raw) | set().union(*written.values()) | _class_level_names(node))),
        stored_parameters=_stored_parameters(methods, raw),
        accumulating_arguments={
            m.name: found for m in methods if (found := _accumulated_parameters(m, _self_name(m)))
        },
    )


_CUT_CALLS = frozenset({"float", "int", "item", "detach", "tolist", "numpy", "len", "round", "str"})


def _accumulated_parameters(method, self_name: str | None) -> tuple[str, ...]:
    """The parameters `method` folds into instance state that outlives the call."""
    if self_name is None:
        return ()
    positional = [a.arg for a in method.args.posonlyargs + method.args.args][1:]
    parameters = set(positional) | {a.arg for a in method.args.kwonlyargs}
    # a parameter rebound first (`val = float(val)`, `val = val.item()`) is judged by that value
    cut = {
        target.id
        for sub in ast.walk(method)
        if isinstance(sub, ast.Assign)
        for target in sub.targets
        if isinstance(target, ast.Name) and target.id in parameters and _cuts(sub.value)
    }
    found: set[str] = set()
    for sub in ast.walk(method):
        value = None
        if isinstance(sub, ast.AugAssign) and isinstance(sub.op, (ast.Add, ast.Sub)):
            if _self_attribute(sub.target, self_name):
                value = sub.value
        elif isinstance(sub, ast.Assign) and len(sub.targets) == 1:
            owner = _self_attribute(sub.targets[0], self_name)
            reads_itself = owner and any(
                _self_attribute(n, self_name) == owner for n in ast.walk(sub.value) if isinstance(n, ast.Attribute)
            )
            if reads_itself:
                value = sub.value
        elif (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr in ("append", "extend", "add_")
            and _self_attribute(sub.func.value, self_name)
            and sub.args
        ):
            value = sub.args[0]
        if value is not None:
            found |= _uncut_names(value) & (parameters - cut)
    return tuple(sorted(found | {str(i) for i, name in enumerate(positional) if name in found}))


def _cuts(node: ast.AST) -> bool:
    """`float(x)`, `x.item()`, `x.detach()`, and any chain through one (`v.data.sum()`,
    `v.detach().mean()`): no graph left."""
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _CUT_CALLS:
                return True
            if not all(_cuts(argument) for argument in node.args):
                return False  # `w.data.mul(val)`: the argument brings its own graph
            node = node.func.value if isinstance(node.func, ast.Attribute) else None
        elif isinstance(node, ast.Attribute):
            if node.attr == "data":
                return True
            node = node.value
        else:
            node = node.value
    return isinstance(node, ast.Constant)


def _uncut_names(node: ast.AST) -> set[str]:
    """Names read by `node` other than inside a cut (`float(val)`, `val.item()`)."""
    if _cuts(node):
        return set()
    if isinstance(node, ast.Name):
        return {node.id}
    return set().union(*(_uncut_names(child) for child in ast.iter_child_nodes(node)))


def _stored_parameters(methods, raw) -> tuple[str, ...]:
    init = next((m for m in methods if m.name == "__init__"), None)
    if init is None:
        return ()
    parameters = [a.arg for a in init.args.posonlyargs + init.args.args][1:]
    keyword_only = [a.arg for a in init.args.kwonlyargs]
    used = {
        name
        for entries in raw.values()
        for value, evaluator in entries
        if evaluator.function is init
        for name in _names_held(value)
    }
    stored = [name for name in parameters + keyword_only if name in used]
    stored += [str(i) for i, name in enumerate(parameters) if name in used]
    return tuple(stored)


def _names_held(node: ast.AST) -> set[str]:
    """Names whose object an expression may hold as is: `fn`, `[fn, other]`,
    `nn.Sequential(fn)`, `fn if a else b`; not `fn.out_channels` or `fn(x)`."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Call):
        parts = [*node.args, *(kw.value for kw in node.keywords)]
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        parts = node.elts
    elif isinstance(node, ast.Starred):
        parts = [node.value]
    elif isinstance(node, ast.IfExp):
        parts = [node.body, node.orelse]
    elif isinstance(node, ast.BoolOp):
        parts = node.values
    else:
        parts = []
    return set().union(*(_names_held(part) for part in parts))


def _class_level_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for statement in node.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


class _AttributeTable:
    """Values of `self.<attr>`, evaluated on first use: one attribute may be built from
    another (`self._norm_layer = norm_layer` ... `self._norm_layer(planes)`)."""

    def __init__(self, raw: dict[str, list]) -> None:
        self.raw = raw
        self.memo: dict[str, frozenset[Held]] = {}

    def get(self, name: str, default=()) -> frozenset[Held]:
        if name in self.memo:
            return self.memo[name]
        if name not in self.raw:
            return frozenset(default)
        self.memo[name] = frozenset()  # cycle guard
        values: set[Held] = set()
        for value, evaluator in self.raw[name]:
            values |= evaluator.values(value)
        self.memo[name] = frozenset(values)
        return self.memo[name]


def _self_attribute(target: ast.AST, self_name: str | None) -> str | None:
    """`self.x` or `self.x[...]` -> "x"."""
    while isinstance(target, ast.Subscript):
        target = target.value
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == self_name:
        return target.attr
    return None


def _class_call_facts(call, self_name, evaluator, raw, buffers, eval_calls, frozen_grads, writes, scope) -> None:
    func = call.func
    if not isinstance(func, ast.Attribute):
        if isinstance(func, ast.Name) and func.id == "setattr" and len(call.args) == 3:
            if isinstance(call.args[0], ast.Name) and call.args[0].id == self_name:
                raw.setdefault(_literal_name(call.args[1]), []).append((call.args[2], evaluator))
        return
    owner = func.value
    is_self = isinstance(owner, ast.Name) and owner.id == self_name
    if is_self and func.attr in ("add_module", "register_module"):
        if len(call.args) == 2:
            raw.setdefault(_literal_name(call.args[0]), []).append((call.args[1], evaluator))
        elif call.args:
            raw.setdefault("", []).append((call.args[0], evaluator))
    elif is_self and func.attr == "register_buffer" and call.args:
        name = _literal_name(call.args[0])
        if name:
            buffers.add(name)
    elif (
        isinstance(owner, ast.Call)
        and isinstance(owner.func, ast.Name)
        and owner.func.id == "super"
        and func.attr == "__init__"
    ):
        for arg in call.args:
            raw.setdefault("", []).append((arg, evaluator))
    attribute = _self_attribute(owner, self_name)
    if attribute is not None:
        if func.attr in ("append", "extend", "insert", "add_module", "update"):
            for arg in call.args[-1:]:
                raw.setdefault(attribute, []).append((arg, evaluator))
        if func.attr in _UPDATING_METHODS:
            writes.add(attribute)
        if func.attr == "eval":
            eval_calls.add(attribute)
        if func.attr == "requires_grad_" and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False:
            frozen_grads.add(attribute)
    dotted = dotted_name(func)
    if dotted and scope.qualify(dotted) in _FUNCTIONAL_BATCH_NORM:
        training = next((kw.value for kw in call.keywords if kw.arg in ("training", "use_input_stats")), None)
        if not (isinstance(training, ast.Constant) and training.value is False):
            for arg in call.args[1:3]:
                name = _self_attribute(arg, self_name)
                if name:
                    writes.add(name)


def _literal_name(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ""


def _forward_updates(buffers: set[str], method_reads: dict[str, tuple[str, ...]], written: dict[str, set[str]]) -> set[str]:
    if "forward" not in method_reads:
        return set()
    reached, pending = set(), ["forward"]
    while pending:
        method = pending.pop()
        if method in reached:
            continue
        reached.add(method)
        pending.extend(r for r in method_reads.get(method, ()) if r in method_reads)
    return buffers & set().union(*(written.get(m, set()) for m in reached))


def _absolute_module(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if module:
        parts.append(module)
    return ".".join(parts)


def separate_roots(module_roots: Iterable[tuple[str, str]]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Python finds a script's imports in the script's own folder first (`sys.path[0]`), so
    `import utils` in `a/train.py` means `a/utils.py` and in `b/train.py` means `b/utils.py`.
    Given each file's (module name, import root), the renames each root needs: a top-level
    name that more than one root defines becomes `name@<root hash>` in that root, for its
    own modules and its imports alike, so neither hides the other and each resolves."""
    tops: dict[str, set[str]] = {}
    for module, root in module_roots:
        tops.setdefault(module.partition(".")[0], set()).add(root)
    renames: dict[str, list[tuple[str, str]]] = {}
    for top, roots in sorted(tops.items()):
        if len(roots) < 2 or not top:
            continue
        for root in roots:
            tag = hashlib.blake2b(root.encode(), digest_size=4).hexdigest()
            renames.setdefault(root, []).append((top, f"{top}@{tag}"))
    return {root: tuple(pairs) for root, pairs in renames.items()}


def sibling_imports(
    module_roots: Sequence[tuple[str, str]],
    renames: dict[str, tuple[tuple[str, str], ...]],
    imported: Sequence[frozenset[str]],
) -> list[tuple[tuple[str, str], ...]]:
    """A script imports the modules beside it by their bare names (`from utils import *` in
    `pkg/train.py`, run as `python pkg/train.py`, means `pkg/utils.py`), whether or not its
    folder is a package, and so do the modules that script imports. For each (module, root),
    with `imported` the top-level names its imports read, the names among them that no
    top-level module of the root, the standard library or torch defines and that a module
    beside it, or beside a package above it, does: as (bare name, qualified module) renames
    for its imports, after the roots' `renames`. Linear in the files and their imports."""
    tops: dict[str, set[str]] = {}
    children: dict[tuple[str, str], set[str]] = {}
    for module, root in module_roots:
        tops.setdefault(root, set()).add(module.partition(".")[0])
        package, _, leaf = module.rpartition(".")
        if package:
            children.setdefault((root, package), set()).add(leaf)
    found = []
    for (module, root), names in zip(module_roots, imported, strict=True):
        chosen = []
        for name in sorted(names - tops[root]):
            if name in sys.stdlib_module_names or name == "torch":
                continue
            # the script may sit in any package above the module: the nearest one wins
            package = module.rpartition(".")[0]
            while package and name not in children.get((root, package), ()):
                package = package.rpartition(".")[0]
            if package:
                chosen.append((name, renamed_module(f"{package}.{name}", renames.get(root, ()))))
        found.append(tuple(chosen))
    return found


_IMPORT_LINE = re.compile(rb"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)|import[ \t]+([^\n#;]+))", re.MULTILINE)


def imported_top_names(source: bytes) -> frozenset[str]:
    """The top-level module names a file's `import` and `from` lines may read, from its bytes
    (before any parse): every name its imports read is among them."""
    names = set()
    for match in _IMPORT_LINE.finditer(source):
        if match.group(1):
            names.add(match.group(1).decode())
        else:
            for part in match.group(2).split(b","):
                word = re.match(rb"\s*\(?\s*([A-Za-z_]\w*)", part)
                if word:
                    names.add(word.group(1).decode())
    return frozenset(names)


def renamed_module(module: str, renames: tuple[tuple[str, str], ...]) -> str:
    top, dot, rest = module.partition(".")
    return f"{dict(renames).get(top, top)}{dot}{rest}"


def module_name_for(path: str, root: str) -> str:
    """Dotted module name of `path` relative to `root` (`pkg/sub/mod.py` -> `pkg.sub.mod`)."""
    relative = os.path.relpath(path, root)
    parts = relative.replace(os.sep, "/").split("/")
    name = parts[-1]
    # a notebook cannot be imported: a hyphen keeps its name out of every import's reach
    parts[-1] = name.removesuffix(".ipynb") + "-ipynb" if name.endswith(".ipynb") else name.removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(part for part in parts if part not in ("", ".", ".."))
