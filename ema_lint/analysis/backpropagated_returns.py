"""Functions that return a value they backpropagated: a training-step helper of another file.

`def train_batch(model, batch, optimizer): ...; loss.backward(); optimizer.step(); return loss`
hands its caller the loss with its graph; a caller that adds it up across steps
(`total += train_batch(...)`) keeps every step's graph. Read on the stdlib `ast` in phase 1,
so callers in other files can ask. A return counts when it is a name the function
backpropagates (`name.backward()`, `scaler.scale(name).backward()`, `accelerator.backward(name)`,
`self.manual_backward(name)`), whole or as an element of a returned tuple.
"""

from __future__ import annotations

import ast


def backpropagated_returns(function: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    """`""` when `function` returns a backpropagated name itself, `"<i>"` for each position `i`
    of a returned tuple that holds one."""
    own = list(_own_nodes(function))
    backward_line: dict[str, int] = {}
    for node in own:
        if isinstance(node, ast.Call):
            for name in _backpropagated_names(node):
                backward_line[name] = min(backward_line.get(name, node.lineno), node.lineno)
    # `loss.backward(); loss = loss.item(); return loss` returns a number
    rebound = {
        target.id
        for node in own
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and node.lineno > backward_line.get(target.id, node.lineno)
    }
    backpropagated = set(backward_line) - rebound
    if not backpropagated:
        return ()
    found: set[str] = set()
    for node in own:
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in backpropagated:
            found.add("")
        elif isinstance(value, ast.Tuple):
            found.update(
                str(index)
                for index, element in enumerate(value.elts)
                if isinstance(element, ast.Name) and element.id in backpropagated
            )
    return tuple(sorted(found))


def _own_nodes(function: ast.AST):
    """The nodes of `function`'s body, not those of functions or classes defined in it."""
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        pending.extend(ast.iter_child_nodes(node))


def _backpropagated_names(call: ast.Call) -> list[str]:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "backward":
        receiver = func.value
        # `scaler.scale(loss).backward()`
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute) and receiver.func.attr == "scale":
            receiver = receiver.args[0] if receiver.args else receiver
        if isinstance(receiver, ast.Name) and not call.args:
            return [receiver.id]
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    # `accelerator.backward(loss)`, `torch.autograd.backward(loss)`, `self.manual_backward(loss)`
    if name in ("backward", "manual_backward") and call.args and isinstance(call.args[0], ast.Name):
        return [call.args[0].id]
    return []
