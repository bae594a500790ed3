from __future__ import annotations

import libcst as cst

from ema_lint.analysis.expressions import detached, one_line, strip_parens
from ema_lint.analysis.function_facts import Site
from ema_lint.analysis.torch_names import IN_PLACE_METHODS
from ema_lint.analysis.value_flow import FileFacts
from ema_lint.diagnostics import Applicability, Fix, Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import AutogradRule

# Buffers every norm layer with running statistics has: `self.bn.running_mean = ...` writes one.
_NORM_BUFFERS = frozenset({"running_mean", "running_var"})
_WRITING_METHODS = IN_PLACE_METHODS | {"fill_", "index_copy_", "scatter_", "masked_fill_"}


class GraphStoredInBuffer(AutogradRule):
    """## What it does
    Finds a module buffer (registered with `register_buffer`, or a child norm layer's
    `running_mean`/`running_var`) written, outside `torch.no_grad()`, with a value that
    carries autograd history: `self.buf = value`, `self.buf[i] = value`,
    `self.buf.copy_(value)`, in `forward` or another method of the module. EMA updates of a
    buffer are EMA201's, and values accumulated into a buffer across steps EMA202's: one
    finding per statement.

    ## Why is this bad?
    A buffer is state: it outlives the step. Written with a tensor computed from the inputs or
    parameters, it holds that step's graph (an in-place write makes the whole buffer part of
    it) until it is overwritten: the graph's memory stays allocated, a later step that reads
    the buffer backpropagates into a graph that was already freed ("Trying to backward
    through the graph a second time"), and `copy.deepcopy(model)` (a model EMA, a
    checkpoint) fails on a buffer that is not a graph leaf.

    ## Example
    ```python
    def forward(self, x):
        if self.normalizer[0] < 0:
            self.normalizer[0] = x.mean() * self.size
        return x / self.normalizer[0]
    ```

    ## Use instead
    ```python
    def forward(self, x):
        if self.normalizer[0] < 0:
            self.normalizer[0] = (x.mean() * self.size).detach()
        return x / self.normalizer[0]
    ```

    ## Fix safety
    Unsafe: `.detach()` stops the gradient a later step would have sent through the buffer
    into this step's graph, which is the point, but a model that meant the buffer as a
    differentiable value (rare; a parameter is the tool for that) changes behaviour.
    """

    code = "EMA205"
    name = "graph-stored-in-buffer"
    severity = Severity.ERROR
    summary = "A module buffer is written with a value that carries autograd history"
    triggers = ("register_buffer", *sorted(_NORM_BUFFERS))
    SUPERSEDED_BY = ("EMA201", "EMA202")

    def check(self, facts: FileFacts) -> None:
        buffers = _registered_buffers(facts.module)
        for site in facts.sites:
            function = site.function
            if function.class_name is None or function.name == "__init__" or site.grad_off or function.grad_free:
                continue
            write = _buffer_write(site, buffers.get(function.class_name, frozenset()))
            if write is None:
                continue
            buffer, values = write
            carrying = [v for v in values if facts.may_carry_graph_at(v, site)]
            if not carrying:
                continue
            module = self.context.module
            value = carrying[0]
            self.report(
                site.statement,
                f"`{one_line(module, buffer)}` is written with `{one_line(module, value)}`, which carries autograd "
                "history, so the buffer keeps this step's graph after the step",
                fix=Fix(
                    f"Store `{detached(module, value)}`" if len(one_line(module, value)) < 40 else "Detach the stored value",
                    Applicability.UNSAFE,
                    (self.edit_replacing(value, detached(module, value)),),
                ),
            )

    VALID = (
        Example(
            """
            class Memory(nn.Module):
                def __init__(self, size):
                    super().__init__()
                    self.register_buffer("normalizer", -torch.ones(1))

                def forward(self, x):
                    if self.normalizer[0] < 0:
                        self.normalizer[0] = (x.mean() * self.size).detach()
                    return x / self.normalizer[0]
            """
        ),
        Example(
            """
            class Queue(nn.Module):
                def __init__(self, dim, size):
                    super().__init__()
                    self.register_buffer("queue", torch.randn(size, dim))

                @torch.no_grad()
                def push(self, keys, ptr):
                    self.queue[ptr:ptr + keys.shape[0]] = keys
            """
        ),
    )
    INVALID = (
        Example(
            """
            class Memory(nn.Module):
                def __init__(self, size):
                    super().__init__()
                    self.register_buffer("normalizer", -torch.ones(1))

                def forward(self, x):
                    if self.normalizer[0] < 0:
                        self.normalizer[0] = x.mean() * self.size
                    return x / self.normalizer[0]
            """,
            message=(
                "`self.normalizer[0]` is written with `x.mean() * self.size`, which carries autograd history, "
                "so the buffer keeps this step's graph after the step"
            ),
            fixed="""
            class Memory(nn.Module):
                def __init__(self, size):
                    super().__init__()
                    self.register_buffer("normalizer", -torch.ones(1))

                def forward(self, x):
                    if self.normalizer[0] < 0:
                        self.normalizer[0] = (x.mean() * self.size).detach()
                    return x / self.normalizer[0]
            """,
        ),
    )


def _registered_buffers(module: cst.Module) -> dict[str, frozenset[str]]:
    """Per class of the file, the names its methods pass to `self.register_buffer`."""
    finder = _BufferRegistrations()
    module.visit(finder)
    return {name: frozenset(found) for name, found in finder.found.items()}


class _BufferRegistrations(cst.CSTVisitor):
    def __init__(self) -> None:
        self.classes: list[str] = []
        self.found: dict[str, set[str]] = {}

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.classes.pop()

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if (
            self.classes
            and isinstance(func, cst.Attribute)
            and func.attr.value == "register_buffer"
            and _is_self(func.value)
            and node.args
            and isinstance(node.args[0].value, cst.SimpleString)
        ):
            name = node.args[0].value.evaluated_value
            if isinstance(name, str):
                self.found.setdefault(self.classes[-1], set()).add(name)


def _buffer_write(site: Site, buffers: frozenset[str]) -> tuple[cst.BaseExpression, list[cst.BaseExpression]] | None:
    """The buffer `site` writes and the values it writes into it, if it writes one."""
    statement = site.statement
    if isinstance(statement, cst.Assign) and len(statement.targets) == 1:
        target = strip_parens(statement.targets[0].target)
        if _names_buffer(target, buffers):
            return target, [statement.value]
    if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
        call = statement.value
        if (
            isinstance(call.func, cst.Attribute)
            and call.func.attr.value in _WRITING_METHODS
            and _names_buffer(strip_parens(call.func.value), buffers)
        ):
            return call.func.value, [a.value for a in call.args if a.keyword is None and not a.star]
    return None


def _names_buffer(target: cst.BaseExpression, buffers: frozenset[str]) -> bool:
    """`self.buf`, `self.buf[i]` for a registered `buf`, or `self.bn.running_mean`."""
    while isinstance(target, cst.Subscript):
        target = strip_parens(target.value)
    if not isinstance(target, cst.Attribute):
        return False
    owner = strip_parens(target.value)
    if _is_self(owner):
        return target.attr.value in buffers
    return (
        target.attr.value in _NORM_BUFFERS
        and isinstance(owner, cst.Attribute)
        and _is_self(strip_parens(owner.value))
    )


def _is_self(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Name) and node.value == "self"
