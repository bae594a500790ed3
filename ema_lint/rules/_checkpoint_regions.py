"""Shared by the EMA1xx rules: which calls open an activation-checkpointed region, and
what the callable they recompute runs.

The callable is resolved on the stdlib `ast` of the enclosing function (re-parsed from
the libcst node's text), with the same evaluator the project index uses, so a rule and
the index never disagree about what a name holds.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ema_lint.project import BUILT, RUNNING_STATS, LocalValues, ModuleScope, ProjectIndex, dotted_name


@dataclass(frozen=True)
class Region:
    """A checkpointing entry point. `editable`: it takes `use_reentrant=` and `context_fn=`
    (passed on to `torch.utils.checkpoint.checkpoint`), so a fix can add them."""

    name: str
    callable_keyword: str
    editable: bool = False
    # fairscale's wrapper hooks every `_BatchNorm` inside to stop tracking running stats while
    # gradients are off (its first, no-grad pass), so they are updated once, by the recompute
    batch_norm_protected: bool = False


_TORCH_CHECKPOINT = Region("checkpoint", "function", editable=True)
_TIMM_CHECKPOINT_SEQ = Region("checkpoint_seq", "functions")
_DEEPSPEED_CHECKPOINT = Region("checkpoint", "function")
_FAIRSCALE_WRAPPER = Region("checkpoint_wrapper", "module", batch_norm_protected=True)
_WRAPPER_MODULE = "torch.distributed.algorithms._checkpoint.checkpoint_wrapper"
APPLY_ACTIVATION_CHECKPOINTING = "apply_activation_checkpointing"

REGIONS: dict[str, Region] = {
    "torch.utils.checkpoint.checkpoint": _TORCH_CHECKPOINT,
    "torch.utils.checkpoint.checkpoint_sequential": Region("checkpoint_sequential", "functions"),
    # timm's thin wrapper forwards `use_reentrant` and `**kwargs` to torch's checkpoint
    "timm.models._manipulate.checkpoint": _TORCH_CHECKPOINT,
    "timm.models.checkpoint": _TORCH_CHECKPOINT,
    "timm.models._manipulate.checkpoint_seq": _TIMM_CHECKPOINT_SEQ,
    "timm.models.helpers.checkpoint_seq": _TIMM_CHECKPOINT_SEQ,
    "timm.models.checkpoint_seq": _TIMM_CHECKPOINT_SEQ,
    f"{_WRAPPER_MODULE}.checkpoint_wrapper": Region("checkpoint_wrapper", "module"),
    f"{_WRAPPER_MODULE}.{APPLY_ACTIVATION_CHECKPOINTING}": Region(APPLY_ACTIVATION_CHECKPOINTING, "model"),
    "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.CheckpointWrapper": Region(
        "CheckpointWrapper", "mod"
    ),
    "deepspeed.checkpointing.checkpoint": _DEEPSPEED_CHECKPOINT,
    "deepspeed.checkpointing.non_reentrant_checkpoint": _DEEPSPEED_CHECKPOINT,
    "fairscale.nn.checkpoint.checkpoint_wrapper": _FAIRSCALE_WRAPPER,
    "fairscale.nn.checkpoint_wrapper": _FAIRSCALE_WRAPPER,
    "fairseq.modules.checkpoint_activations.checkpoint_wrapper": Region("checkpoint_wrapper", "m"),
    "fairscale.nn.checkpoint.checkpoint_activations.checkpoint_wrapper": _FAIRSCALE_WRAPPER,
    "deepspeed.runtime.activation_checkpointing.checkpointing.checkpoint": _DEEPSPEED_CHECKPOINT,
}

# Calls that pass their argument's modules through unchanged, for the resolver.
_PASS_THROUGH = frozenset(
    {"enumerate", "reversed", "list", "tuple", "iter", "zip", "functools.partial", "itertools.chain", "itertools.chain.from_iterable"}
)
_ITERATION_METHODS = frozenset(
    {"children", "modules", "values", "items", "named_children", "named_modules", "forward", "__call__", "_modules"}
)
# Hugging Face's implicit regions (see `analysis.torch_names`): the callee is the region.
HF_GRADIENT_CHECKPOINTING = Region("gradient checkpointing", "")
HF_CHECKPOINTING_FUNC_REGION = Region("gradient checkpointing", "function")
_MAX_DEPTH = 10


def region_for(project: ProjectIndex, qualified: str) -> Region | None:
    return REGIONS.get(project.resolve(qualified))


class FunctionRegions:
    """Resolution of checkpointed callables inside one function (or module body)."""

    def __init__(
        self,
        project: ProjectIndex,
        scope: ModuleScope,
        function: ast.AST | None,
        class_name: str | None,
        state: str = RUNNING_STATS,
        module_functions: dict[str, ast.AST] | None = None,
    ) -> None:
        self.project = project
        self.state = state
        # the file's module-level `def`s by name: factories that return closures
        self.module_functions = module_functions or {}
        self.class_name = class_name
        self_name = None
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and class_name is not None:
            positional = function.args.posonlyargs + function.args.args
            self_name = positional[0].arg if positional else None
        self.self_name = self_name
        attributes = None
        if class_name is not None:
            facts = project.class_facts(class_name)
            attributes = _FrozenAttributes(facts.attributes if facts else {})
        self.values = LocalValues(scope, function, self_name, attributes)

    def path(self, node: ast.AST, depth: int = 0, seen: frozenset = frozenset()) -> tuple[str, ...] | None:
        """Steps from the callable to a module that updates running statistics, or None."""
        if depth > _MAX_DEPTH:
            return None
        if isinstance(node, ast.Subscript):
            return self.path(node.value, depth + 1, seen)
        if isinstance(node, ast.Starred):
            return self.path(node.value, depth + 1, seen)
        if isinstance(node, (ast.List, ast.Tuple)):
            return self._first(node.elts, depth, seen)
        if isinstance(node, ast.Call):
            return self._call_path(node, depth, seen)
        if isinstance(node, ast.Lambda):
            return self._body_path(node, depth, seen)
        if isinstance(node, ast.Name) and node.id == self.self_name and self.class_name:
            return self.project.running_stat_path(self.class_name, state=self.state)
        if isinstance(node, ast.Attribute):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == self.self_name and self.class_name:
                return self.project.member_path(self.class_name, node.attr, state=self.state)
            # sorted: a set's order follows string hashing, which changes with every run
            for held in sorted(self.values.values(owner)):
                if held.kind == BUILT and self.project.class_facts(held.target) is not None:
                    path = self.project.member_path(held.target, node.attr, state=self.state)
                    if path is not None:
                        return path
            if node.attr in _ITERATION_METHODS:
                return self.path(owner, depth + 1, seen)
        if isinstance(node, ast.Name):
            if node.id in seen:
                return None
            seen = seen | {node.id}
            for definition in self.values.definitions.get(node.id, ()):
                path = self._body_path(definition, depth, seen)
                if path is not None:
                    return path
            for how, source in self.values.bindings.get(node.id, ()):
                if how == "value":
                    path = self.path(source, depth + 1, seen)
                    if path is not None:
                        return path
        return self.project.values_path(self.class_name, self.values.values(node), state=self.state)

    def _first(self, nodes, depth, seen) -> tuple[str, ...] | None:
        for item in nodes:
            path = self.path(item, depth + 1, seen)
            if path is not None:
                return path
        return None

    def _call_path(self, call: ast.Call, depth: int, seen) -> tuple[str, ...] | None:
        func = call.func
        dotted = dotted_name(func)
        if dotted is not None and self.values.scope.qualify(dotted) in _PASS_THROUGH:
            return self._first(call.args, depth, seen)
        if isinstance(func, ast.Attribute) and func.attr in _ITERATION_METHODS:
            return self.path(func.value, depth + 1, seen)
        factory = self.module_functions.get(dotted or "")
        bound = 0
        if factory is None and isinstance(func, ast.Attribute) and self._is_self(func.value):
            # `self.custom(blk)`: a method of this class that returns a closure
            factory = self.module_functions.get(f"{self.class_name.rpartition('.')[2]}.{func.attr}")
            bound = 1
        if factory is not None and id(factory) not in seen:
            path = self._closure_path(factory, call, depth, seen | {id(factory)}, bound)
            if path is not None:
                return path
        if dotted == "getattr" and len(call.args) >= 2 and self._is_self(call.args[0]):
            for member in sorted(self._strings(call.args[1], frozenset())):
                path = self.project.member_path(self.class_name, member, state=self.state)
                if path is not None:
                    return path
            return None
        return self.project.values_path(self.class_name, self.values.values(call), state=self.state)

    def _closure_path(self, factory, call: ast.Call, depth: int, seen, bound: int = 0) -> tuple[str, ...] | None:
        """`f = factory(self.norm1, self.conv1)` where `factory` returns a nested function or
        lambda: what that closure runs is what the call passed for the names it reads.
        `bound`: leading parameters the call does not pass (`self` of a method)."""
        arguments = factory.args
        parameters = [a.arg for a in arguments.posonlyargs + arguments.args][bound:]
        passed = dict(zip(parameters, call.args))
        passed.update({kw.arg: kw.value for kw in call.keywords if kw.arg})
        nested = {n.name: n for n in ast.walk(factory) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n is not factory}
        for node in ast.walk(factory):
            if not isinstance(node, ast.Return) or node.value is None:
                continue
            returned = node.value
            closure = nested.get(returned.id) if isinstance(returned, ast.Name) else returned
            if not isinstance(closure, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            body = closure.body if isinstance(closure.body, list) else [closure.body]
            for statement in body:
                for name in ast.walk(statement):
                    if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Load) and name.id in passed:
                        path = self.path(passed[name.id], depth + 1, seen)
                        if path is not None:
                            return path
        return None

    def _is_self(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == self.self_name and self.class_name is not None

    def _strings(self, node: ast.AST, seen: frozenset) -> set[str]:
        """The string constants an expression may evaluate to (`getattr(self, n)` for `n` in
        a literal tuple of names, sliced or not)."""
        if isinstance(node, ast.Name):
            if node.id in seen:
                return set()
            return set().union(
                *(self._strings(value, seen | {node.id}) for how, value in self.values.bindings.get(node.id, ()) if how == "value")
            )
        if isinstance(node, ast.Constant):
            return {node.value} if isinstance(node.value, str) else set()
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(self._strings(e, seen) for e in node.elts))
        if isinstance(node, ast.Subscript):
            return self._strings(node.value, seen)
        return set()

    def _body_path(self, definition, depth: int, seen) -> tuple[str, ...] | None:
        """What calling a local function or lambda runs: the `self.<member>`s and local
        callables its body uses."""
        arguments = definition.args
        parameters = {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
        parameters |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        body = definition.body if isinstance(definition.body, list) else [definition.body]
        for statement in body:
            for node in ast.walk(statement):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == self.self_name
                    and self.class_name
                ):
                    path = self.project.member_path(self.class_name, node.attr, state=self.state)
                    if path is not None:
                        return path
                elif (
                    isinstance(node, ast.Name)
                    and isinstance(node.ctx, ast.Load)
                    and node.id not in parameters
                    and node.id != self.self_name
                    and (node.id in self.values.definitions or node.id in self.values.bindings)
                ):
                    path = self.path(node, depth + 1, seen)
                    if path is not None:
                        return path
        return None

    def isinstance_classes(self, check_fn: ast.AST) -> list[str]:
        """Classes a `check_fn=lambda m: isinstance(m, Block)` selects."""
        classes = []
        for node in ast.walk(check_fn):
            if isinstance(node, ast.Call) and dotted_name(node.func) == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for kind in kinds:
                    classes.extend(sorted(h.target for h in self.values.references(kind)))
        return classes


class _FrozenAttributes:
    """The index's attribute table in the shape `LocalValues` reads."""

    def __init__(self, attributes) -> None:
        self.attributes = attributes

    def get(self, name: str, default=()):
        return frozenset(self.attributes.get(name, default))


def parse_expression(code: str) -> ast.AST | None:
    try:
        return ast.parse(f"(\n{code}\n)", mode="eval").body
    except SyntaxError:
        return None

