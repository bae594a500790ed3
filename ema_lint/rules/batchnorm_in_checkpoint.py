"""EMA101 batchnorm-in-checkpoint."""

from __future__ import annotations

import ast

import libcst as cst

from ema_lint.diagnostics import Applicability, Edit, Fix, Location, RequiredImport, Severity
from ema_lint.project import PARTIAL, ModuleScope, ProjectIndex, dotted_name, summarize
from ema_lint.rule import Example, FileContext, Rule
from ema_lint.rules._checkpoint_regions import (
    APPLY_ACTIVATION_CHECKPOINTING,
    REGIONS,
    FunctionRegions,
    Region,
    parse_expression,
)

CONTEXT_FN = RequiredImport("ema_lint.runtime", "running_stats_context_fn")
_NO_GRAD = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.grad_mode.no_grad"})


class BatchnormInCheckpoint(Rule):
    """
    ## What it does
    Finds activation-checkpointed regions (`torch.utils.checkpoint.checkpoint`,
    `checkpoint_sequential`, timm's `checkpoint`/`checkpoint_seq`, `checkpoint_wrapper`,
    `apply_activation_checkpointing`, DeepSpeed's `checkpoint`) whose callable runs a module
    with running statistics: BatchNorm, SyncBatchNorm, InstanceNorm with
    `track_running_stats=True`, their subclasses, or a project class whose `forward`
    updates a registered buffer. The callable is followed through lambdas, closures,
    bound methods, `self.<attr>` and `for block in self.blocks` loops, and across files.

    ## Why is this bad?
    Checkpointing runs the region's forward again during backward. Every running-stat
    module in it updates `running_mean`/`running_var` twice per step and counts
    `num_batches_tracked` twice, so its statistics drift from the un-checkpointed model's.

    ## Example
    ```python
    checkpoint(self.layers, x, use_reentrant=False)
    ```

    ## Use instead
    ```python
    from ema_lint.runtime import running_stats_context_fn

    checkpoint(self.layers, x, use_reentrant=False, context_fn=running_stats_context_fn)
    ```

    ## Fix safety
    Adding `context_fn=running_stats_context_fn` to a non-reentrant call is safe: outputs
    and gradients are unchanged and statistics match the un-checkpointed model. Switching a
    reentrant (or unspecified) call to `use_reentrant=False` is unsafe: the two variants
    differ in which inputs need gradients. Library-driven regions get a display-only hint
    to call `ema_lint.runtime.convert_running_stats(model)`.
    """

    code = "EMA101"
    name = "batchnorm-in-checkpoint"
    severity = Severity.ERROR
    summary = "A module with running statistics runs inside an activation-checkpointed region"
    # every region entry point has "checkpoint" in its name; other spellings are imported
    # aliases, which `could_report` finds through the project index
    triggers = ("checkpoint",)

    VALID = (
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU())
                    self.norm = nn.BatchNorm1d(8)

                def forward(self, x):
                    return self.norm(checkpoint(self.mlp, x, use_reentrant=False))
            """
        ),
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))

                def forward(self, x):
                    return checkpoint(self.body, x, use_reentrant=False)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(8, 8, 3, padding=1)
                    self.bn = nn.BatchNorm2d(8)

                def forward(self, x):
                    return self.bn(self.conv(x))

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([Block() for _ in range(4)])

                def forward(self, x):
                    for block in self.blocks:
                        x = checkpoint(block, x, use_reentrant=False)
                    return x
            """,
            message="`block` → `Net.blocks` → `Block.bn` updates running stats twice under `checkpoint`",
            fixed="""
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(8, 8, 3, padding=1)
                    self.bn = nn.BatchNorm2d(8)

                def forward(self, x):
                    return self.bn(self.conv(x))

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([Block() for _ in range(4)])

                def forward(self, x):
                    for block in self.blocks:
                        x = checkpoint(block, x, use_reentrant=False, context_fn=running_stats_context_fn)
                    return x
            """,
        ),
    )

    def __init__(self, context: FileContext) -> None:
        super().__init__(context)
        facts = context.project.modules.get(context.module_name)
        if facts is None:
            # checked alone (no runner): index this file by itself
            facts = summarize(context.module_name, context.module.bytes)
            context.project = ProjectIndex.from_facts([*context.project.modules.values(), facts])
        self.project = context.project
        self.scope = ModuleScope(
            context.module_name, facts.imports, set(facts.classes), set(facts.function_returns)
        )
        self.classes: list[str] = []
        self.functions: list[cst.FunctionDef] = []
        self.no_grad_depth = 0
        self._regions: dict[int, FunctionRegions] = {}
        self._module_tree: ast.Module | None = None
        self._functions_by_line: dict[int, ast.AST] = {}
        self._aliases: dict[str, Region] = {}

    @classmethod
    def could_report(cls, source: bytes, project: ProjectIndex, module_name: str) -> bool:
        """The trigger word, or an import of a region entry point under another name."""
        if any(word.encode() in source for word in cls.triggers):
            return True
        facts = project.modules.get(module_name)
        if facts is None:
            return True
        return any(project.resolve(target) in REGIONS for target in facts.imports.values()) or any(
            project.resolve(f"{star}.{name}") in REGIONS
            for star in facts.star_imports
            for name in _names_defined(project, star)
        )

    # -- scope tracking ------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.classes.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.functions.append(node)

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.functions.pop()

    def visit_With(self, node: cst.With) -> None:
        if any(self._is_no_grad(item.item) for item in node.items):
            self.no_grad_depth += 1

    def leave_With(self, original_node: cst.With) -> None:
        if any(self._is_no_grad(item.item) for item in original_node.items):
            self.no_grad_depth -= 1

    def _is_no_grad(self, expression: cst.BaseExpression) -> bool:
        if isinstance(expression, cst.Call):
            expression = expression.func
        dotted = _dotted(expression)
        return dotted is not None and self.project.resolve(self.scope.qualify(dotted)) in _NO_GRAD

    def _tree(self) -> ast.Module:
        """The file's stdlib `ast`, parsed on first need (a region call was found)."""
        if self._module_tree is None:
            self._module_tree = ast.parse(self.context.module.code)
            for node in ast.walk(self._module_tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self._functions_by_line[node.lineno] = node
                elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    self._record_alias(node)
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

    def _function_regions(self) -> FunctionRegions:
        """Resolution context: the outermost function of the innermost class (where `self`
        is bound; nested closures are part of its body), or the module body."""
        tree = self._tree()
        class_name = f"{self.context.module_name}.{self.classes[0]}" if len(self.classes) == 1 else None
        function = None
        if self.functions:
            function = self._functions_by_line.get(self.range_of(self.functions[0].name).start.line)
        key = id(function)
        if key not in self._regions:
            if function is None:
                self._regions[key] = FunctionRegions(self.project, self.scope, tree, None)
            else:
                self._regions[key] = FunctionRegions(self.project, self.scope, function, class_name)
        return self._regions[key]

    # -- the check -----------------------------------------------------------------------

    def visit_Call(self, node: cst.Call) -> None:
        if self.no_grad_depth:
            return
        dotted = _dotted(node.func)
        if dotted is None:
            return
        qualified = self.project.resolve(self.scope.qualify(dotted))
        region = REGIONS.get(qualified)
        direct = region is not None
        if region is None:
            self._tree()
            region = self._aliases.get(dotted)
            if region is None:
                return
        target = _argument(node, region.callable_keyword)
        if target is None:
            return
        regions = self._function_regions()
        expression = parse_expression(self.context.module.code_for_node(target))
        if expression is None:
            return
        if region.name == APPLY_ACTIVATION_CHECKPOINTING and (check_fn := _argument(node, "check_fn", 99)):
            path = self._selected_path(regions, check_fn)
        else:
            path = regions.path(expression)
        if path is None:
            return
        callable_text = self.context.module.code_for_node(target).strip()
        if callable_text.startswith("self.") and path and path[0].endswith(callable_text[4:]):
            path = path[1:]
        steps = "".join(f" → `{step}`" for step in path)
        self.report(
            node,
            f"`{callable_text}`{steps} updates running stats twice under `{region.name}`",
            fix=self._fix(node, region, direct),
        )

    def _selected_path(self, regions: FunctionRegions, check_fn: cst.CSTNode) -> tuple[str, ...] | None:
        expression = parse_expression(self.context.module.code_for_node(check_fn))
        if expression is None:
            return None
        for qualified in regions.isinstance_classes(expression):
            path = self.project.running_stat_path(qualified)
            if path is not None:
                return path or (qualified.rpartition(".")[2],)
        return None

    def _fix(self, call: cst.Call, region: Region, direct: bool) -> Fix:
        convert = Fix(
            "Call `ema_lint.runtime.convert_running_stats(model)` once before training",
            Applicability.DISPLAY_ONLY,
        )
        if not (region.editable and direct) or any(arg.star == "**" for arg in call.args):
            return convert
        if _argument(call, "context_fn", 99) is not None:
            return convert
        end = self.range_of(call.args[-1].value).end
        insert_at = Edit(_loc(end), _loc(end), "")
        reentrant = _argument(call, "use_reentrant", 99)
        if isinstance(reentrant, cst.Name) and reentrant.value == "False":
            return Fix(
                "Add `context_fn=running_stats_context_fn`",
                Applicability.SAFE,
                (Edit(insert_at.start, insert_at.end, ", context_fn=running_stats_context_fn"),),
                (CONTEXT_FN,),
            )
        if reentrant is None:
            edits = (Edit(insert_at.start, insert_at.end, ", use_reentrant=False, context_fn=running_stats_context_fn"),)
        else:
            edits = (
                self.edit_replacing(reentrant, "False"),
                Edit(insert_at.start, insert_at.end, ", context_fn=running_stats_context_fn"),
            )
        return Fix(
            "Use `use_reentrant=False` with `context_fn=running_stats_context_fn`",
            Applicability.UNSAFE,
            edits,
            (CONTEXT_FN,),
        )


def _loc(position) -> Location:
    return Location(position.line, position.column + 1)


def _argument(call: cst.Call, keyword: str, position: int = 0) -> cst.BaseExpression | None:
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    if position < len(positional) and all(
        not arg.star for arg in call.args[: call.args.index(positional[position]) + 1]
    ):
        return positional[position].value
    return None


def _dotted(node: cst.BaseExpression) -> str | None:
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None


def _names_defined(project: ProjectIndex, module: str) -> list[str]:
    facts = project.modules.get(module)
    if facts is None:
        return []
    return [*facts.imports, *facts.aliases]
