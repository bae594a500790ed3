"""Questions about one expression of a libcst tree that need no context beyond it: its
source text, the names it reads, whether it cuts autograd history or steps an optimizer."""

from __future__ import annotations

import re
from typing import Sequence

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.torch_names import (
    CUT_METHODS,
    ENVIRONMENT_METHODS,
    ENVIRONMENT_NAME,
    GRAD_OFF_CONTEXTS,
    METRIC_NAME,
    OPTIMIZER_NAME,
    PASS_THROUGH_CALLS,
    REQUIRES_GRAD_HELPER,
    SCALAR_CASTS,
    SCALAR_TYPES,
    TENSOR_COLLECTIONS,
)


def code_of(module: cst.Module, node: cst.CSTNode) -> str:
    return "".join(module.code_for_node(node).split())


def one_line(module: cst.Module, node: cst.CSTNode) -> str:
    """`node`'s code on one line, for messages: `zip(\n    a, b\n)` reads `zip(a, b)`."""
    text = " ".join(module.code_for_node(node).split())
    return text.replace("( ", "(").replace(" )", ")").replace("[ ", "[").replace(" ]", "]").replace(",)", ")")


def strip_parens(node: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(node, cst.Tuple) or not getattr(node, "lpar", None):
        return node
    return node.with_changes(lpar=(), rpar=())


def is_atom(node: cst.BaseExpression) -> bool:
    """True when `node.detach()` needs no parentheses around `node`."""
    return bool(getattr(node, "lpar", None)) or isinstance(
        node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)
    )


def detached(module: cst.Module, node: cst.BaseExpression) -> str:
    text = module.code_for_node(node)
    return f"{text}.detach()" if is_atom(node) else f"({text}).detach()"


def is_scalar_type(annotation: cst.BaseExpression) -> bool:
    """`float`, `Optional[int]`, `int | None`, `Union[int, float]`: a declared plain value."""
    annotation = strip_parens(annotation)
    if isinstance(annotation, cst.Name):
        return annotation.value in SCALAR_TYPES or annotation.value == "None"
    if isinstance(annotation, cst.BinaryOperation) and isinstance(annotation.operator, cst.BitOr):
        return is_scalar_type(annotation.left) and is_scalar_type(annotation.right)
    if isinstance(annotation, cst.Subscript) and attribute_name(annotation.value) in ("Optional", "Union"):
        return all(
            isinstance(element.slice, cst.Index) and is_scalar_type(element.slice.value)
            for element in annotation.slice
        )
    return False


def attribute_name(func: cst.BaseExpression) -> str | None:
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def root_name(node: cst.BaseExpression) -> str | None:
    """`self` for `self.a.b`, `x` for `x.data`, `x[0].y`, `x.f()`."""
    while True:
        node = strip_parens(node)
        if isinstance(node, cst.Name):
            return node.value
        if isinstance(node, cst.Attribute):
            node = node.value
        elif isinstance(node, cst.Subscript):
            node = node.value
        elif isinstance(node, cst.Call):
            node = node.func
        else:
            return None


def through_data(node: cst.BaseExpression) -> bool:
    node = strip_parens(node)
    return isinstance(node, cst.Attribute) and node.attr.value == "data"


def is_grad_off_context(expression: cst.BaseExpression) -> bool:
    """`torch.no_grad()`, `no_grad()`, `torch.inference_mode()`, `torch.set_grad_enabled(False)`."""
    if not isinstance(expression, cst.Call):
        return False
    name = attribute_name(expression.func)
    if name in GRAD_OFF_CONTEXTS:
        return True
    if name == "set_grad_enabled" and expression.args:
        value = expression.args[0].value
        return isinstance(value, cst.Name) and value.value == "False"
    return False


def is_grad_off_decorator(decorator: cst.Decorator) -> bool:
    expression = decorator.decorator
    return is_grad_off_context(expression) or attribute_name(expression) in GRAD_OFF_CONTEXTS


def collection_kind(iterable: cst.BaseExpression) -> str | None:
    """`parameters` / `state_dict` / ... when `iterable` yields a module's tensors."""
    iterable = strip_parens(iterable)
    if isinstance(iterable, cst.Call):
        name = attribute_name(iterable.func)
        if name in TENSOR_COLLECTIONS:
            return name
        if name in ("values", "items") and isinstance(iterable.func, cst.Attribute):
            return collection_kind(iterable.func.value)
        if name in ("list", "tuple") and len(iterable.args) == 1:
            return collection_kind(iterable.args[0].value)
    return None


def backward_runner(receiver: cst.BaseExpression) -> bool:
    """An object whose `backward(loss)` backpropagates its argument (Accelerate, Fabric,
    DeepSpeed engines, fairseq and Lightning wrappers), not a tensor."""
    return re.search(r"accelerator|fabric|engine|optim|trainer|strategy|scaler", _last_name(receiver)) is not None


def metric_key(lookup: cst.Subscript) -> bool:
    """`d["accuracy"]`: a string key naming a metric or a count."""
    if len(lookup.slice) != 1 or not isinstance(lookup.slice[0].slice, cst.Index):
        return False
    return metric_key_text(lookup.slice[0].slice.value)


def metric_key_text(key: cst.BaseExpression) -> bool:
    """A string literal naming a metric or a count (`"accuracy"`, `"n_samples"`)."""
    key = strip_parens(key)
    if not isinstance(key, cst.SimpleString):
        return False
    text = key.evaluated_value
    return isinstance(text, str) and (METRIC_NAME.fullmatch(text) is not None or names_a_count(text))


def names_a_count(attribute: str) -> bool:
    """`batch.batch_size`, `x.num_frames`, `seq.lengths`: sizes and counts are integers, and
    an integer tensor never requires grad."""
    return attribute.endswith(("size", "_len", "_length", "_lengths", "_count")) or attribute.startswith(("num_", "n_"))


def creates_graph(call: cst.Call) -> bool:
    return any(
        a.keyword is not None and a.keyword.value == "create_graph" and not m.matches(a.value, m.Name("False"))
        for a in call.args
    )


def is_false_arg(args: Sequence[cst.Arg]) -> bool:
    return len(args) == 1 and isinstance(args[0].value, cst.Name) and args[0].value.value == "False"


def toggled_modules(call: cst.Call) -> tuple[list[cst.BaseExpression], bool] | None:
    """`set_requires_grad([net_d, net_g], False)`, `toggle_grad(model, flag)`,
    `requires_grad(model, require=True)`: the modules a requires-grad helper is handed (its
    first argument, or the items of a list there), and whether it certainly turns them off."""
    name = attribute_name(call.func) or ""
    if not REQUIRES_GRAD_HELPER.fullmatch(name) or len(call.args) < 2 or call.args[0].keyword is not None:
        return None
    first = strip_parens(call.args[0].value)
    modules = [e.value for e in first.elements] if isinstance(first, (cst.List, cst.Tuple)) else [first]
    return modules, all(m.matches(a.value, m.Name("False")) for a in call.args[1:2])


def freezes(line: cst.BaseStatement) -> bool:
    """`p.requires_grad_(False)` or `p.requires_grad = False` as a loop-body line."""
    if not isinstance(line, cst.SimpleStatementLine):
        return False
    for statement in line.body:
        if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
            call = statement.value
            if attribute_name(call.func) == "requires_grad_" and is_false_arg(call.args):
                return True
        if isinstance(statement, cst.Assign) and isinstance(statement.value, cst.Name):
            target = statement.targets[0].target
            if attribute_name(target) == "requires_grad" and statement.value.value == "False":
                return True
    return False


def indices_of(node: cst.Subscript) -> bool:
    """`t.max(dim)[1]`, `t.topk(k)[1]`, `t.sort()[1]`: the index half of a (values, indices) result."""
    value = strip_parens(node.value)
    return (
        isinstance(value, cst.Call)
        and attribute_name(value.func) in ("max", "min", "topk", "sort", "kthvalue", "mode", "median")
        and len(node.slice) == 1
        and m.matches(node.slice[0].slice, m.Index(value=m.Integer("1")))
    )


def is_constant(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.Integer, cst.Float)) or (
        isinstance(node, cst.Name) and node.value in ("None", "True", "False")
    )


def made_new(value: cst.BaseExpression) -> bool:
    """Arithmetic or a call that computes a new tensor, not one that may hand back an existing
    one (`outputs[0]`, `x if c else y`, `list(outputs)`)."""
    if isinstance(value, (cst.BinaryOperation, cst.UnaryOperation)):
        return True
    return isinstance(value, cst.Call) and not (
        isinstance(value.func, cst.Name) and value.func.value in PASS_THROUGH_CALLS
    )


def leaves_torch(node: cst.BaseExpression) -> bool:
    """`x.numpy()`, `x.cpu().numpy()`, `x.tolist()`: a value handed to non-torch code."""
    return m.matches(node, m.Call(func=m.Attribute(attr=m.Name("numpy") | m.Name("tolist"))))


class _Gather(cst.CSTVisitor):
    """Names and attribute chains under a node; a small walk, cheaper than `matchers.findall`."""

    def __init__(self) -> None:
        self.nodes: list[cst.Name | cst.Attribute] = []

    def visit_Name(self, node: cst.Name) -> None:
        self.nodes.append(node)

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.nodes.append(node)


class _Calls(cst.CSTVisitor):
    def __init__(self) -> None:
        self.calls: list[cst.Call] = []

    def visit_Call(self, node: cst.Call) -> bool:
        self.calls.append(node)
        # the arguments of a cut are cut too: `float(loss)` holds no call that matters
        return attribute_name(node.func) not in CUT_METHODS | SCALAR_CASTS


def calls_in(node: cst.CSTNode) -> list[cst.Call]:
    calls = _Calls()
    node.visit(calls)
    return calls.calls


def names_and_attributes(node: cst.CSTNode) -> list[cst.Name | cst.Attribute]:
    gather = _Gather()
    node.visit(gather)
    return gather.nodes


def names_in(node: cst.CSTNode) -> set[str]:
    return {n.value for n in names_and_attributes(node) if isinstance(n, cst.Name)}


def evaluated_calls(test: cst.BaseExpression) -> list[cst.Call]:
    """The calls a test certainly evaluated when it held: the test itself, under `not`, and
    every operand of an `and` (an `or` may stop before any one of them)."""
    test = strip_parens(test)
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        return evaluated_calls(test.expression)
    if isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And):
        return evaluated_calls(test.left) + evaluated_calls(test.right)
    return [test] if isinstance(test, cst.Call) else []


def moving_index(lookup: cst.Subscript) -> bool:
    """A slice with a computed bound (`buf[LOSS, start:end]`): each step writes another stretch
    of one tensor. A key or a constant index overwrites a slot (`last[name] = value` over a
    fixed set of names, `buf[0] = x`), which keeps at most one value per slot."""
    for element in lookup.slice:
        index = element.slice
        if isinstance(index, cst.Slice):
            bounds = [b for b in (index.lower, index.upper) if b is not None]
            if any(not is_constant(strip_parens(b)) for b in bounds):
                return True
    return False


def data_reads(node: cst.BaseExpression, held: set[str]) -> list[cst.Name | cst.Attribute]:
    """The names and attribute chains `node` computes from, not looking into the arguments
    of a call to something rooted at a name in `held` (a module or helper the function holds)."""
    node = strip_parens(node)
    if isinstance(node, (cst.Name, cst.Attribute)):
        return [node]
    if isinstance(node, cst.Call):
        func = strip_parens(node.func)
        reads = data_reads(func.value, held) if isinstance(func, cst.Attribute) else []
        if isinstance(func, (cst.Name, cst.Attribute)) and root_name(func) in held:
            return reads
        return reads + [r for a in node.args for r in data_reads(a.value, held)]
    found = []
    pending = list(node.children)
    while pending:
        child = pending.pop()
        if isinstance(child, cst.BaseExpression):
            found += data_reads(child, held)
        else:
            pending.extend(child.children)
    return found


def steps_an_optimizer(statement: cst.CSTNode) -> bool:
    """`optimizer.step()`, `self.opt_d.step()`, `scaler.step(optimizer)` as a statement."""
    if not (isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call)):
        return False
    call = statement.value
    return attribute_name(call.func) == "step" and (
        optimizer_like(call.func) or any(optimizer_like(a.value) for a in call.args)
    )


def optimizer_like(node: cst.BaseExpression) -> bool:
    """The receiver of `optimizer.step()`, `self.opt_d.step()`, `optimizers[0].step()`,
    `scaler.step(optimizer)` (given the method), or an optimizer itself (given a value): not a
    scheduler's or an environment's `step`."""
    node = strip_parens(node)
    if isinstance(node, cst.Attribute) and node.attr.value == "step":
        node = node.value
    return OPTIMIZER_NAME.search(_last_name(node)) is not None


def environment_step(call: cst.Call) -> bool:
    """`env.step(action)`, `self.envs.reset()`: a simulator's step, which returns arrays and
    numbers (the Gym API), never a tensor with history."""
    return (
        isinstance(call.func, cst.Attribute)
        and call.func.attr.value in ENVIRONMENT_METHODS
        and ENVIRONMENT_NAME.fullmatch(_last_name(call.func.value)) is not None
    )


def _last_name(node: cst.BaseExpression) -> str:
    """`opt_d` for `self.opt_d`, `optimizers` for `optimizers[0]`, lower-cased; "" for other
    expressions."""
    node = strip_parens(node)
    while isinstance(node, cst.Subscript):
        node = strip_parens(node.value)
    if isinstance(node, cst.Attribute):
        return node.attr.value.lower()
    return node.value.lower() if isinstance(node, cst.Name) else ""


def whole_tensor(lookup: cst.Subscript) -> bool:
    """`t[:]` / `t[...]`: every element of the tensor."""
    if len(lookup.slice) != 1:
        return False
    part = lookup.slice[0].slice
    if isinstance(part, cst.Slice):
        return part.lower is None and part.upper is None and part.step is None
    return isinstance(part, cst.Index) and isinstance(part.value, cst.Ellipsis)
