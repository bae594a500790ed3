"""The libcst side shared by the EMA1xx rules: tracking where a call sits (class, function,
`torch.no_grad()` blocks), recognising calls that open a checkpointed region under any name,
and resolving what each region runs to a running-stat witness path.

`CheckpointSiteRule.site_at(call)` answers for one call; the rules decide what to report.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import ClassVar

import libcst as cst
import libcst.matchers as m

from ema_lint.diagnostics import Applicability, Edit, Fix, Location, RequiredImport
from ema_lint.project import (
    BUILT,
    OTHER_BUFFERS,
    PARTIAL,
    RUNNING_STATS,
    ModuleFacts,
    ModuleScope,
    ProjectIndex,
    dotted_name,
    summarize,
)
from ema_lint.rule import FileContext, Rule
from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.syntax import parse_any
from ema_lint.analysis.torch_names import HF_CHECKPOINTING_FUNC, HF_CHECKPOINTING_LAYER
from ema_lint.rules._checkpoint_regions import (
    APPLY_ACTIVATION_CHECKPOINTING,
    HF_CHECKPOINTING_FUNC_REGION,
    HF_GRADIENT_CHECKPOINTING,
    REGIONS,
    FunctionRegions,
    Region,
    parse_expression,
)

CONTEXT_FN = RequiredImport("ema_lint.runtime", "running_stats_context_fn")
REPLAY = RequiredImport("ema_lint.runtime", "replay_buffers")
CONVERT_HINT = "Call `ema_lint.runtime.convert_running_stats(model)` once before training"
REPLAY_HINT = (
    "Call `ema_lint.runtime.replay_on_recompute(module)` on the buffer-mutating module once before training"
)
_NO_GRAD = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.grad_mode.no_grad"})
# What the runtime fixes put in place. Running statistics are exact under either context_fn
# (replay restores every buffer); other buffers only under replay.
_RUNNING_STATS_CONTEXT_FNS = frozenset(
    {"ema_lint.runtime.running_stats_context_fn", "ema_lint.runtime.running_stats.running_stats_context_fn"}
)
_REPLAY_CONTEXT_FNS = frozenset({"ema_lint.runtime.replay_buffers", "ema_lint.runtime.replay.replay_buffers"})
_SAFE_CONTEXT_FNS = {
    RUNNING_STATS: _RUNNING_STATS_CONTEXT_FNS | _REPLAY_CONTEXT_FNS,
    OTHER_BUFFERS: _REPLAY_CONTEXT_FNS,
}
_SAFE_WRAPPERS = frozenset({"ema_lint.runtime.recompute_aware", "ema_lint.runtime.running_stats.recompute_aware"})
CHECKPOINT_SEQUENTIAL = "checkpoint_sequential"
_GROWING_METHODS = frozenset({"add_module", "register_module", "append", "extend", "insert"})
_SEQUENTIAL = frozenset({"torch.nn.Sequential", "torch.nn.modules.container.Sequential"})


@dataclass(frozen=True)
class CheckpointSite:
    """A call that checkpoints a callable reaching a running-stat module. `direct`: the
    callee is the entry point itself (not a local alias or partial); `path`: the witness
    steps from the callable down to the running-stat module."""

    call: cst.Call
    region: Region
    direct: bool
    callable_text: str
    path: tuple[str, ...]


class CheckpointSiteRule(Rule):
    """Base of rules that look at checkpointed regions; not registered itself. `STATE`:
    which modules a region must not hold (`project.RUNNING_STATS` or `OTHER_BUFFERS`)."""

    STATE: ClassVar[str] = RUNNING_STATS

    def __init__(self, context: FileContext) -> None:
        super().__init__(context)
        facts = context.project.modules.get(context.module_name)
        if facts is None:
            # checked alone (no runner), or syntax the running Python's `ast` cannot read even
            # downgraded but libcst can: index this file by itself, or with no facts
            try:
                facts = summarize(context.module_name, context.module.bytes)
            except (SyntaxError, ValueError):
                facts = ModuleFacts(context.module_name)
            context.project = context.project.with_module(facts)
        self.project = context.project
        self.scope = ModuleScope(
            context.module_name,
            facts.imports,
            set(facts.classes),
            set(facts.function_returns),
            bool(facts.star_imports),
            set(facts.aliases),
        )
        self.classes: list[str] = []
        self.functions: list[cst.FunctionDef] = []
        self.no_grad_depth = 0
        self.loops: list[cst.For] = []
        self._regions: dict[tuple[int, str], FunctionRegions] = {}
        self._module_tree: ast.Module | None = None
        # every `def` of the file in source order, in both trees: a libcst function is
        # matched to its `ast` twin by its position in that order, which needs no positions
        # metadata (a code generation pass over the whole file)
        self._ast_functions: list[ast.AST] = []
        self._functions_seen = 0
        self._outermost_function = 0
        self._aliases: dict[str, Region] = {}
        # Hugging Face checkpointing layer classes of the project (None: not looked up yet)
        self._checkpointing_layers: frozenset[str] | None = None

    @classmethod
    def could_report(cls, source: bytes, project: ProjectIndex, module_name: str) -> bool:
        return cls.uses_checkpointing(source, project, module_name)

    @classmethod
    def uses_checkpointing(cls, source: bytes, project: ProjectIndex, module_name: str) -> bool:
        """False only when the file provably calls no region entry point. A call needs the
        entry point named in this file: directly, through an import of this file, or in a
        local alias (`partial(checkpoint, ...)`), so every one is a reference that resolves
        to an entry point. Files mentioning "checkpoint" (often only `grad_checkpointing`
        flags and comments) are checked against the names phase 1 recorded they read."""
        facts = project.modules.get(module_name)
        if facts is None:
            return True
        if any(project.resolve(target) in REGIONS for target in facts.imports.values()) or any(
            project.resolve(f"{star}.{name}") in REGIONS
            for star in facts.star_imports
            for name in _names_defined(project, star)
        ):
            return True
        if HF_CHECKPOINTING_FUNC.encode() in source:
            return True
        # a call of a Hugging Face checkpointing layer that holds this rule's state: the file
        # names such a class (it builds or imports it) to hold an instance
        layers = project.checkpointing_layers_holding(HF_CHECKPOINTING_LAYER, cls.STATE)
        if any(name.rpartition(".")[2].encode() in source for name in layers):
            return True
        if b"checkpoint" not in source:
            return False
        return any(project.resolve(name) in REGIONS for name in facts.read_names)

    # -- scope tracking ------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.classes.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if not self.functions:
            self._outermost_function = self._functions_seen
        self._functions_seen += 1
        self.functions.append(node)

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.functions.pop()

    def visit_For(self, node: cst.For) -> None:
        self.loops.append(node)

    def leave_For(self, original_node: cst.For) -> None:
        self.loops.pop()

    def visit_With(self, node: cst.With) -> None:
        if any(self._is_no_grad(item.item) for item in node.items):
            self.no_grad_depth += 1

    def leave_With(self, original_node: cst.With) -> None:
        if any(self._is_no_grad(item.item) for item in original_node.items):
            self.no_grad_depth -= 1

    def qualified(self, expression: cst.BaseExpression) -> str | None:
        dotted = dotted_text(expression)
        return None if dotted is None else self.project.resolve(self.scope.qualify(dotted))

    def _is_no_grad(self, expression: cst.BaseExpression) -> bool:
        if isinstance(expression, cst.Call):
            expression = expression.func
        return self.qualified(expression) in _NO_GRAD

    def _tree(self) -> ast.Module:
        """The file's stdlib `ast`, parsed on first need (a region call was found)."""
        if self._module_tree is None:
            self._module_tree = parse_any(self.context.text or self.context.module.code)
            for node in ast.walk(self._module_tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self._ast_functions.append(node)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    self._record_alias(node)
            # one `def` per line at most, so line and column order is source order, the
            # order libcst visits them in (decorators and defaults hold no `def`)
            self._ast_functions.sort(key=lambda node: (node.lineno, node.col_offset))
        return self._module_tree

    def _record_alias(self, node: ast.Assign | ast.AnnAssign) -> None:
        """`ckpt = checkpoint` / `self._ckpt = partial(checkpoint, ...)`: names that call a region."""
        value = node.value
        if isinstance(value, ast.Call) and value.args:
            func = dotted_name(value.func)
            if func is None or self.project.resolve(self.scope.qualify(func)) not in PARTIAL:
                return
            value = value.args[0]
        target_name = dotted_name(value)
        if target_name is None:
            return
        region = REGIONS.get(self.project.resolve(self.scope.qualify(target_name)))
        if region is None:
            return
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            name = dotted_name(target)
            if name is not None:
                self._aliases[name] = region

    def _function_regions(self, state: str) -> FunctionRegions:
        """Resolution context: the outermost function of the innermost class (where `self`
        is bound; nested closures are part of its body), or the module body."""
        tree = self._tree()
        class_name = f"{self.context.module_name}.{self.classes[0]}" if len(self.classes) == 1 else None
        function = None
        if self.functions:
            function = self._ast_functions[self._outermost_function]
        key = (id(function), state)
        if key not in self._regions:
            definitions = (ast.FunctionDef, ast.AsyncFunctionDef)
            factories = {n.name: n for n in tree.body if isinstance(n, definitions)}
            factories.update(
                {
                    f"{c.name}.{n.name}": n
                    for c in tree.body
                    if isinstance(c, ast.ClassDef)
                    for n in c.body
                    if isinstance(n, definitions)
                }
            )
            if function is None:
                self._regions[key] = FunctionRegions(self.project, self.scope, tree, None, state, factories)
            else:
                self._regions[key] = FunctionRegions(self.project, self.scope, function, class_name, state, factories)
        return self._regions[key]

    # -- sites ---------------------------------------------------------------------------

    def region_of(self, call: cst.Call) -> tuple[Region, bool] | None:
        """The region `call` opens and whether its callee is the entry point itself."""
        dotted = dotted_text(call.func)
        if dotted is None:
            return None
        region = REGIONS.get(self.project.resolve(self.scope.qualify(dotted)))
        if region is not None:
            return region, True
        if dotted.rpartition(".")[2] == HF_CHECKPOINTING_FUNC:
            return HF_CHECKPOINTING_FUNC_REGION, False
        self._tree()
        region = self._aliases.get(dotted)
        if region is not None:
            return region, False
        return (HF_GRADIENT_CHECKPOINTING, False) if self._calls_checkpointing_layer(call) else None

    def _calls_checkpointing_layer(self, call: cst.Call) -> bool:
        """The callee may be an instance of a Hugging Face `GradientCheckpointingLayer`
        subclass: its `__call__` checkpoints itself when gradient checkpointing is on. Only a
        local name or `self.<attr>` can hold such a layer; answers are kept per function."""
        if self._checkpointing_layers is None:
            layers = self.project.checkpointing_layers_holding(HF_CHECKPOINTING_LAYER, self.STATE)
            text = self.context.text
            self._checkpointing_layers = layers if any(n.rpartition(".")[2] in text for n in layers) else frozenset()
        if not self._checkpointing_layers:
            return False
        func = call.func
        if isinstance(func, cst.Name):
            scope = self.scope
            if func.value in scope.imports or func.value in scope.functions or func.value in scope.classes:
                return False  # a function or class of the module, not a layer instance
        elif not m.matches(func, m.Attribute(value=m.Name("self"))) or len(self.classes) != 1:
            return False
        key = ("hf-layer-call", self.context.module_name, self._outermost_function if self.functions else -1, dotted_text(func))
        # shared by EMA101 and EMA103, which ask about the same calls
        return self.context.derived(key, lambda: self._holds_checkpointing_layer(func))

    def _holds_checkpointing_layer(self, func: cst.BaseExpression) -> bool:
        if isinstance(func, cst.Attribute):
            # `self.<attr>`: the class's attribute table answers without the function's locals
            held = self.project.class_facts(f"{self.context.module_name}.{self.classes[0]}")
            values = () if held is None else held.attributes.get(func.attr.value, ())
        else:
            expression = parse_expression(func.value)
            if expression is None:
                return False
            values = self._function_regions(self.STATE).values.values(expression)
        return any(
            value.kind == BUILT
            and any(facts.qualified_name in self._checkpointing_layers for facts in self.project.mro(value.target))
            for value in values
        )

    def site_at(self, call: cst.Call) -> CheckpointSite | None:
        """The checkpointed region `call` opens, when it runs an unprotected running-stat module."""
        if self.no_grad_depth:
            return None
        found = self.region_of(call)
        if found is None:
            return None
        region, direct = found
        if region.batch_norm_protected and self.STATE == RUNNING_STATS:
            return None
        target = call.func if region is HF_GRADIENT_CHECKPOINTING else argument(call, region.callable_keyword)
        if target is None or self._is_protected(call, target):
            return None
        path = self._path(call, region, target, self.STATE)
        if path is None:
            return None
        callable_text = self.context.module.code_for_node(target).strip()
        if callable_text.startswith("self.") and path and path[0].endswith(callable_text[4:]):
            path = path[1:]
        return CheckpointSite(call, region, direct, callable_text, path)

    def report_site(self, call: cst.Call, doubled: str) -> None:
        """Report `call` when it opens a region running a module holding this rule's state;
        `doubled` says what that module does twice (`updates running stats`)."""
        site = self.site_at(call)
        if site is None:
            return
        steps = "".join(f" → `{step}`" for step in site.path)
        self.report(
            call,
            f"`{site.callable_text}`{steps} {doubled} twice under `{site.region.name}`",
            fix=self.site_fix(site),
        )

    def _path(self, call: cst.Call, region: Region, target: cst.BaseExpression, state: str) -> tuple[str, ...] | None:
        """The steps from the region's callable to a module holding `state`, if it runs one."""
        regions = self._function_regions(state)
        expression = parse_expression(self.context.module.code_for_node(self._element_source(target)))
        if expression is None:
            return None
        if region.name == APPLY_ACTIVATION_CHECKPOINTING and (check_fn := argument(call, "check_fn", 99)):
            return self._selected_path(regions, check_fn, state)
        if region.name == CHECKPOINT_SEQUENTIAL:
            return self._sequential_path(call, regions, expression, state)
        return regions.path(expression)

    def _element_source(self, target: cst.BaseExpression) -> cst.BaseExpression:
        """For a loop's own element (`for i, blk in enumerate(self.blocks2): checkpoint(blk, x)`),
        the iterable it comes from: the name's other bindings (`blk` of the next stage's
        loop) never reach this call. Any other target as it is."""
        if not isinstance(target, cst.Name):
            return target
        for loop in reversed(self.loops):
            bound = {n.value for n in m.findall(loop.target, m.Name())}
            if target.value not in bound:
                continue
            rebound = m.findall(loop.body, m.AssignTarget(target=m.Name(target.value)) | m.For(target=m.Name(target.value)))
            return target if rebound else loop.iter
        return target

    def also_holds(self, site: CheckpointSite, state: str) -> bool:
        """Whether the region of `site` also runs a module holding `state`."""
        target = argument(site.call, site.region.callable_keyword)
        if site.region is HF_GRADIENT_CHECKPOINTING:
            target = site.call.func
        return target is not None and self._path(site.call, site.region, target, state) is not None

    def _sequential_path(
        self, call: cst.Call, regions: FunctionRegions, functions: ast.AST, state: str
    ) -> tuple[str, ...] | None:
        """torch runs the last of `segments` segments without checkpointing: only the first
        `len // segments * (segments - 1)` children are recomputed. When the children or
        the segment count are not literal, any child counts."""
        segments_node = argument(call, "segments", 1)
        segments = int(segments_node.value) if isinstance(segments_node, cst.Integer) else None
        if segments == 1:
            return None
        found = self._sequence_items(regions, functions, state)
        if found is None or segments is None:
            return regions.path(functions)
        items, owner = found
        recomputed = items[: len(items) // segments * (segments - 1)]
        for item in recomputed:
            path = owner.path(item)
            if path is not None:
                return path
        return None

    def _sequence_items(
        self, regions: FunctionRegions, node: ast.AST, state: str
    ) -> tuple[list[ast.AST], FunctionRegions] | None:
        """The literal children of `nn.Sequential(a, b, c)` / `[a, b, c]`, written at the call,
        bound once to a local name, or assigned once to `self.<attr>` in this class."""
        owner = regions
        if isinstance(node, ast.Name):
            bindings = regions.values.bindings.get(node.id, [])
            if len(bindings) != 1 or bindings[0][0] != "value":
                return None
            node = bindings[0][1]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == regions.self_name:
            assigned = self._self_assignments(node.attr)
            if len(assigned) != 1:
                return None
            method, node = assigned[0]
            owner = FunctionRegions(self.project, self.scope, method, regions.class_name, state)
        if isinstance(node, ast.Call):
            callee = dotted_name(node.func)
            if callee is None or self.project.resolve(self.scope.qualify(callee)) not in _SEQUENTIAL or node.keywords:
                return None
            items = list(node.args)
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = list(node.elts)
        else:
            return None
        if any(isinstance(item, ast.Starred) for item in items):
            return None
        return items, owner

    def _self_assignments(self, attribute: str) -> list[tuple[ast.AST, ast.AST]]:
        """(method, value) for every `self.<attribute> = value` in the enclosing class."""
        if len(self.classes) != 1:
            return []
        found = []
        for node in self._tree().body:
            if isinstance(node, ast.ClassDef) and node.name == self.classes[0]:
                for method in node.body:
                    if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) or not method.args.args:
                        continue
                    self_name = method.args.args[0].arg
                    for sub in ast.walk(method):
                        if (
                            isinstance(sub, ast.Call)
                            and isinstance(sub.func, ast.Attribute)
                            and sub.func.attr in _GROWING_METHODS
                            and dotted_name(sub.func.value) == f"{self_name}.{attribute}"
                        ):
                            return []  # children added later: not a literal sequence
                        if isinstance(sub, ast.Assign) and any(
                            isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                            and t.value.id == self_name and t.attr == attribute
                            for t in sub.targets
                        ):
                            found.append((method, sub.value))
        return found

    def _is_protected(self, call: cst.Call, target: cst.BaseExpression) -> bool:
        """Already fixed: `context_fn=replay_buffers`, or for running statistics also
        `context_fn=running_stats_context_fn` or `recompute_aware(fn)`."""
        context_fn = argument(call, "context_fn", 99)
        if context_fn is not None and self.qualified(context_fn) in _SAFE_CONTEXT_FNS[self.STATE]:
            return True
        return (
            self.STATE == RUNNING_STATS
            and isinstance(target, cst.Call)
            and self.qualified(target.func) in _SAFE_WRAPPERS
        )

    def _selected_path(self, regions: FunctionRegions, check_fn: cst.CSTNode, state: str) -> tuple[str, ...] | None:
        expression = parse_expression(self.context.module.code_for_node(check_fn))
        if expression is None:
            return None
        for qualified in regions.isinstance_classes(expression):
            path = self.project.running_stat_path(qualified, state=state)
            if path is not None:
                return path or (qualified.rpartition(".")[2],)
        return None

    def site_fix(self, site: CheckpointSite) -> Fix:
        """The exact fix for one site: the `context_fn` that makes the region's state exact
        (`running_stats_context_fn` for running statistics, `replay_buffers` for other
        buffers, and for a region holding both) where the call can take it, SAFE when the call
        is already non-reentrant; else a module-level hint."""
        running_stats = self.STATE == RUNNING_STATS
        replay = not running_stats or self.also_holds(site, OTHER_BUFFERS)
        required = REPLAY if replay else CONTEXT_FN
        name = required.name
        hint = Fix(CONVERT_HINT if running_stats else REPLAY_HINT, Applicability.DISPLAY_ONLY)
        call = site.call
        if not (site.region.editable and site.direct) or any(arg.star == "**" for arg in call.args):
            return hint
        reentrant = argument(call, "use_reentrant", 99)
        non_reentrant = isinstance(reentrant, cst.Name) and reentrant.value == "False"
        existing = argument(call, "context_fn", 99)
        if existing is not None:
            if not running_stats and non_reentrant and self.qualified(existing) in _RUNNING_STATS_CONTEXT_FNS:
                # Replay restores running statistics too, so it takes the other's place.
                return Fix(
                    f"Use `context_fn={name}`, which restores every buffer",
                    Applicability.SAFE,
                    (self.edit_replacing(existing, name),),
                    (required,),
                )
            return hint
        end = _location(self.range_of(call.args[-1].value).end)
        if non_reentrant:
            return Fix(f"Add `context_fn={name}`", Applicability.SAFE, (Edit(end, end, f", context_fn={name}"),), (required,))
        if reentrant is None:
            edits = (Edit(end, end, f", use_reentrant=False, context_fn={name}"),)
        else:
            edits = (self.edit_replacing(reentrant, "False"), Edit(end, end, f", context_fn={name}"))
        return Fix(f"Use `use_reentrant=False` with `context_fn={name}`", Applicability.UNSAFE, edits, (required,))


def _location(position) -> Location:
    return Location(position.line, position.column + 1)


def argument(call: cst.Call, keyword: str, position: int = 0) -> cst.BaseExpression | None:
    """The argument bound to `keyword`, or the `position`-th positional one."""
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    if position < len(positional) and all(
        not arg.star for arg in call.args[: call.args.index(positional[position]) + 1]
    ):
        return positional[position].value
    return None


def _names_defined(project: ProjectIndex, module: str) -> list[str]:
    facts = project.modules.get(module)
    if facts is None:
        return []
    return [*facts.imports, *facts.aliases]
