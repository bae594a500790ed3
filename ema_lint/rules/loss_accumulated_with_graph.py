from __future__ import annotations

import libcst as cst

from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.torch_names import EMPTYING_METHOD, LIBRARY_ACCUMULATORS, STEP_HOOKS
from ema_lint.diagnostics import Applicability, Fix, Severity
from ema_lint.project import BUILT
from ema_lint.rule import Example
from ema_lint.rules._autograd import AutogradRule
from ema_lint.analysis.expressions import (
    names_in,
    one_line,
    attribute_name,
    collection_kind,
    detached,
    root_name,
    steps_an_optimizer,
    strip_parens,
)
from ema_lint.analysis.function_facts import Function
from ema_lint.analysis.recurrences import Accumulation, accumulation
from ema_lint.analysis.torch_names import PARAMETER_SOURCES
from ema_lint.analysis.value_flow import FileFacts


def _is_container(value: cst.BaseExpression, function: Function) -> bool:
    """A container literal, or a name every binding of which is one (`extra = [out.max()]`)."""
    value = strip_parens(value)
    if isinstance(value, cst.Name):
        bindings = function.bindings.get(value.value, ())
        return bool(bindings) and all(
            not b.element_of and isinstance(strip_parens(b.value), _CONTAINER_LITERALS) for b in bindings
        )
    return isinstance(value, _CONTAINER_LITERALS)


def _training(facts: FileFacts, function: Function, loops) -> list:
    """The loops of `function` among `loops` that run one training step per iteration."""
    training = [loop for loop in loops if loop.runs_backward]
    if function.steps_optimizer:
        # a loop that steps no optimizer, in a function that does, runs within one step
        # (gradient accumulation, sub-networks, a batch group): its graphs go with the step
        training = [loop for loop in training if loop.steps_optimizer and not _over_networks(facts, function, loop)]
    return training


def _over_networks(facts: FileFacts, function: Function, loop) -> bool:
    """A loop whose every optimizer step picks its optimizer by the loop's variable
    (`for i in range(len(netsD)): ... optimizersD[i].step()`): one update of each of several
    networks, all within one training step."""
    variables = names_in(loop.node.target) if isinstance(loop.node, cst.For) else set()
    steps = [s.statement for s in facts.sites if s.function is function and loop in s.loops and steps_an_optimizer(s.statement)]
    if not variables or not steps:
        return False
    return all(_stepped_optimizer_names(step.value) & variables for step in steps)


def _stepped_optimizer_names(call: cst.Call) -> set[str]:
    """The names the stepped optimizer is picked with: the receiver of `opts[i].step()`, or
    the arguments of `scaler.step(opts[i])` and `step(optimizer)`."""
    if isinstance(call.func, cst.Attribute):
        names = names_in(call.func.value)
    else:
        names = set()
    for argument in call.args:
        names |= names_in(argument.value)
    return names


def _runs_one_step(function: Function) -> bool:
    """`function` is one training step: it calls `backward` outside any loop of its own
    (a trainer's `train_step`, whatever its name)."""
    return any(not loops for _, loops in function.backward_calls)


def _filled_per_step(facts: FileFacts, function: Function, parameter: str) -> bool:
    """A caller of this file passes, for `parameter`, a container it made before a training
    loop and calls `function` in that loop (`computeBatchLoss(..., trnMetrics_g)` per batch):
    what the function stores in it lives across the steps."""
    position = function.params.index(parameter)
    for call in facts.calls:
        if call.callee != function.name or call.class_name != function.class_name or call.caller is function:
            continue
        offset = 1 if function.class_name is not None and call.class_name is not None else 0
        positional = [a for a in call.args if a.keyword is None and not a.star]
        keyword = {a.keyword.value: a for a in call.args if a.keyword is not None}
        argument = keyword.get(parameter) or (
            positional[position - offset] if 0 <= position - offset < len(positional) else None
        )
        if argument is None or not isinstance(strip_parens(argument.value), cst.Name):
            continue
        passed = strip_parens(argument.value).value
        for loop in _training(facts, call.caller, call.loops):
            if LossAccumulatedWithGraph._carried_across(facts, call.caller, passed, None, loop):
                return True
    return False


def _called_per_step(facts: FileFacts, function: Function, accumulator: str) -> bool:
    """A method the class's own training step calls (`loss, aux = self.loss_fn(batch)` in an
    `update_fn` that backpropagates): what it keeps on `self` outlives each step as well,
    unless that step starts it afresh (`self.outputs = []` before the call)."""
    if function.class_name is None:
        return False
    callers = [
        call.caller
        for call in facts.calls
        if call.callee == function.name
        and call.class_name == function.class_name
        and call.caller is not function
        and (call.caller.name in STEP_HOOKS or _runs_one_step(call.caller) or any(loop.runs_backward for loop in call.loops))
    ]
    return bool(callers) and not any(_rebinds(facts, caller, accumulator) for caller in callers)


def _rebinds(facts: FileFacts, function: Function, code: str) -> bool:
    """`function` assigns `code` afresh (`self.outputs = []`) somewhere in its body."""
    return any(
        site.function is function
        and isinstance(site.statement, cst.Assign)
        and any(facts.code(strip_parens(t.target)) == code for t in site.statement.targets)
        for site in facts.sites
    )


def _read_as_mapping(value: cst.BaseExpression, function: Function, module: cst.Module) -> bool:
    """A name the function (or, at module level, the script) also reads as a mapping: by a
    string key (`loss["total"].backward()`) or through `.values()`, `.items()`, `.keys()`,
    `.get(...)`: a dict of tensors, which has no `.detach()`."""
    value = strip_parens(value)
    if not isinstance(value, cst.Name):
        return False
    reads = _MappingReads()
    (function.node or module).visit(reads)
    return value.value in reads.names


class _MappingReads(cst.CSTVisitor):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Subscript(self, node: cst.Subscript) -> None:
        index = node.slice[0].slice if len(node.slice) == 1 else None
        if isinstance(node.value, cst.Name) and isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            self.names.add(node.value.value)

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.attr.value in _MAPPING_METHODS:
            self.names.add(func.value.value)


_MAPPING_METHODS = frozenset({"values", "items", "keys", "get"})


# `self.metrics.losses.total.update(loss)`: deeper chains are rare and cost lookups
MOST_ATTRIBUTE_HOPS = 3
_CONTAINER_LITERALS = (
    cst.List, cst.Tuple, cst.Dict, cst.Set, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp
)

class LossAccumulatedWithGraph(AutogradRule):
    """## What it does
    Finds a value with autograd history (the loss, or something computed from it) added to an
    accumulator (`total += loss`, `total = total + loss`, `losses.append(loss)`) inside a
    training loop that backpropagates something else, when the accumulator itself is never
    backpropagated. A method a framework calls once per step (Lightning's `training_step`, a
    trainer's `train_step`, Hugging Face Trainer's `compute_loss`) is such a loop body: state it
    keeps on `self` outlives the step. An accumulator re-created within each optimizer step
    (gradient accumulation, the sub-networks of one step) frees its graphs with the step and is
    not reported.

    ## Why is this bad?
    Each addition links the accumulator to that step's graph, so every step's graph stays
    reachable until the accumulator is dropped: memory grows with the number of steps, often
    until the process runs out of memory at the end of a long epoch.

    ## Example
    ```python
    running_loss = 0.0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss
    ```

    ## Use instead
    ```python
    running_loss = 0.0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.detach()
    ```
    `.detach()` keeps the value on its device; `.item()` would also cut the graph but waits for
    the device on every step.

    Gradient accumulation (`acc += loss` then `acc.backward()`) is correct and not reported.

    ## Fix safety
    Safe: the accumulator is never backpropagated, so no gradient changes. Unsafe when the
    accumulator leaves the function (returned, or a `self.` attribute), where a caller might
    backpropagate it.
    """

    code = "EMA202"
    name = "loss-accumulated-with-graph"
    severity = Severity.ERROR
    summary = "A loss is accumulated across steps together with its autograd graph"
    # A finding needs a training loop, which `_autograd` recognises only by a call named
    # `backward` or `autograd.grad` in the loop body, or a per-step hook (`training_step`,
    # ...): a file without one of these words cannot hold one.
    triggers = ("backward", "autograd", *sorted(STEP_HOOKS))

    @classmethod
    def could_report(cls, source: bytes, project, module_name: str) -> bool:
        # a loop that calls another file's step helper (`total += train_batch(...)`) trains
        # without saying `backward` itself
        return super().could_report(source, project, module_name) or project.calls_a_step_helper(module_name)

    @classmethod
    def structurally_possible(cls, project, module_name: str) -> bool:
        """Every finding sits in a loop that calls something named `backward` (itself or
        through another file's step helper) or in a per-step hook; the textual trigger also
        passes files that only say the words in docstrings."""
        facts = project.modules.get(module_name)
        return facts is None or facts.calls_backward or project.calls_a_step_helper(module_name)

    def check(self, facts: FileFacts) -> None:
        for site in facts.sites:
            found = accumulation(facts, site)
            if found is not None and self._keeps_graph(facts, found):
                self._report(facts, found)
            for passed in self._passed_to_accumulators(site):
                if self._keeps_graph(facts, passed):
                    self._report(facts, passed)

    def _passed_to_accumulators(self, site) -> list[Accumulation]:
        """`losses.update(loss, n)` where `losses` is an instance of a class (in any checked
        file) whose `update` folds that argument into its own state (`self.sum += val * n`):
        the accumulation happens there, and the graph comes from here."""
        statement = site.statement
        if not (
            isinstance(statement, cst.Expr)
            and isinstance(statement.value, cst.Call)
            and isinstance(statement.value.func, cst.Attribute)
        ):
            return []
        call = statement.value
        accumulating = self._accumulating_arguments(site, strip_parens(call.func.value), call.func.attr.value)
        found = []
        for index, argument in enumerate(call.args):
            if argument.star:
                break
            bound = argument.keyword.value if argument.keyword is not None else str(index)
            if bound in accumulating:
                found.append(Accumulation(site, call.func.value, argument.value))
        return found

    def _accumulating_arguments(self, site, receiver: cst.BaseExpression, method: str) -> tuple[str, ...]:
        project = self.context.project
        accumulating: set[str] = set()
        for qualified in self._receiver_classes(site, receiver):
            accumulating.update(LIBRARY_ACCUMULATORS.get(qualified, {}).get(method, ()))
            # the first class of the MRO that defines the method is the one called
            for facts in project.mro(qualified):
                if method in facts.accumulating_arguments:
                    accumulating.update(facts.accumulating_arguments[method])
                    break
        return tuple(sorted(accumulating))

    def _receiver_classes(self, site, receiver: cst.BaseExpression, depth: int = 0) -> list[str]:
        """The classes `receiver` may be an instance of: a local built by a constructor, an
        attribute of such an instance or of `self` (`metrics.losses_track`, `self.meters`)
        that one of its methods assigns a constructed value, or an item of either."""
        project, module_name = self.context.project, self.context.module_name
        receiver = strip_parens(receiver)
        # `meters["loss"].update(loss)`: the meters a dict of them holds
        of_items = isinstance(receiver, cst.Subscript)
        if of_items:
            receiver = strip_parens(receiver.value)
        classes: list[str] = []
        if isinstance(receiver, cst.Name):
            for binding in site.function.scope_of(receiver.value).bindings.get(receiver.value, ()):
                value = strip_parens(binding.value)
                if binding.element_of:
                    continue
                # `DistributedMetric(...) if distributed else AverageMeter()`: either may run
                choices = [strip_parens(value.body), strip_parens(value.orelse)] if isinstance(value, cst.IfExp) else [value]
                for made in [c for choice in choices for c in (_item_constructors(choice) if of_items else [choice])]:
                    if isinstance(made, cst.Call):
                        made = made.func
                    dotted = dotted_text(made)
                    if dotted is not None:
                        classes.append(project.qualify(module_name, dotted))
        elif isinstance(receiver, cst.Attribute) and depth < MOST_ATTRIBUTE_HOPS:
            base = strip_parens(receiver.value)
            if isinstance(base, cst.Name) and base.value == "self" and site.function.class_name:
                owners = [project.qualify(module_name, site.function.class_name)]
            else:
                owners = self._receiver_classes(site, base, depth + 1)
            for owner in owners:
                for facts in project.mro(owner):
                    held = facts.attributes.get(receiver.attr.value, ())
                    classes.extend(h.target for h in held if h.kind == BUILT)
        return classes

    def _keeps_graph(self, facts: FileFacts, found: Accumulation) -> bool:
        site = found.site
        function = site.function
        if site.grad_off or function.grad_free:
            return False
        accumulator = strip_parens(found.accumulator)
        name = root_name(accumulator)
        if name is None or name in function.backward_names:
            return False
        if not isinstance(accumulator, (cst.Name, cst.Attribute, cst.Subscript)) or accumulator.value == "self":
            return False
        held = accumulator
        while isinstance(held, cst.Subscript):
            held = strip_parens(held.value)
        if facts.code(held) in function.feeds_backward:
            return False  # `buf.append(loss)` ... `torch.stack(buf).mean().backward()`: accumulation of a loss
        if not facts.may_carry_graph_at(found.value, site):
            return False
        if _stores_parameter(found):
            return False
        owner = function.scope_of(name)
        if owner is not function:
            # a closure's free variable (`metrics` of the enclosing `train`) outlives each call:
            # the steps are the owner's training loops around the calls of the closure
            calls = [c for c in facts.calls if c.caller is owner and c.class_name is None and c.callee == function.name]
            loops = {loop for call in calls for loop in call.loops}
            return any(self._carried_across(facts, owner, name, None, loop) for loop in _training(facts, owner, loops))
        if name in function.params and name not in ("self", "cls") and _filled_per_step(facts, function, name):
            return True
        training = _training(facts, function, site.loops)
        if function.name in STEP_HOOKS or (
            not site.loops
            and (_runs_one_step(function) or _called_per_step(facts, function, facts.code(accumulator)))
        ):
            # `self.training_step_outputs.append(loss)`: the framework's loop (or the caller's)
            # is the step loop, and a local of the step (a loop's total included) dies with it
            return root_name(accumulator) == "self" and not facts.reset_before(site, facts.code(accumulator))
        return any(self._carried_across(facts, function, name, found.site.statement, loop) for loop in training)

    @staticmethod
    def _carried_across(facts: FileFacts, function: Function, name: str, statement, loop) -> bool:
        """The accumulator rooted at `name` outlives one training step of `loop`: it is a
        `self.` attribute, or the local it is (or is an item or attribute of, `stats["loss"]`)
        was bound before the loop and is not re-created at the top of the loop body (by a
        statement other than the accumulating `statement`), nor where the loop steps its
        optimizer (`if i % accumulation == 0: optimizer.step(); acc = 0`: a window of
        micro-batches, freed with its step)."""
        if name == "self":
            return True
        bindings = function.bindings.get(name, ())
        if any(b.statement is not None and b.statement is not statement and b.loops and b.loops[-1] is loop for b in bindings):
            return False
        stepping = {s.blocks for s in facts.sites_of(function) if loop in s.loops and steps_an_optimizer(s.statement)}
        resets = [b for b in bindings if not b.augmented and name not in names_in(b.value)]
        if any(b.loops and b.loops[-1] is loop and b.blocks in stepping for b in resets):
            return False
        # `memory.clear_memory()` beside `optimizer.step()`: a rollout buffer emptied each update
        if any(loop in s.loops and s.blocks in stepping and _empties(s.statement, name) for s in facts.sites_of(function)):
            return False
        return any(loop not in b.loops for b in bindings)

    def _report(self, facts: FileFacts, found: Accumulation) -> None:
        module = self.context.module
        accumulator = one_line(module, strip_parens(found.accumulator))
        value = one_line(module, strip_parens(found.value))
        root = root_name(found.accumulator)
        # a `self.` attribute, a returned name or the caller's container handed in as a parameter
        function = found.site.function
        escapes = root == "self" or root in function.returned_names or root in function.params
        # `loss, dist = model.step(x)`: `dist` is taken for a tensor because it comes beside the
        # loss; if it is a number after all, `.detach()` would raise
        inferred = _unpacked_beside_the_loss(facts, found)
        statement = found.site.statement
        extends = isinstance(statement, cst.Expr) and attribute_name(statement.value.func) == "extend"
        if extends or _is_container(found.value, found.site.function) or _read_as_mapping(found.value, found.site.function, module):
            # `[a, b].detach()` is no method of a list (and `extend` takes any iterable): which
            # items are tensors is a person's call.
            fix = Fix("Detach the tensors in the accumulated value", Applicability.DISPLAY_ONLY)
        else:
            fix = Fix(
                f"Accumulate `{value}.detach()`" if len(value) < 40 else "Detach the accumulated value",
                Applicability.UNSAFE if escapes or inferred else Applicability.SAFE,
                (self.edit_replacing(found.value, detached(module, found.value)),),
            )
        self.report(
            found.site.statement,
            f"`{accumulator}` accumulates `{value}` with its autograd graph, so every step's graph stays in memory",
            fix=fix,
        )

    VALID = (
        Example(
            """
            running_loss = 0.0
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()
            """
        ),
        Example(
            """
            for batch in loader:
                accumulated = 0
                for chunk in batch.split(4):
                    accumulated += criterion(model(chunk), chunk)
                accumulated.backward()
                optimizer.step()
            """
        ),
    )
    INVALID = (
        Example(
            """
            losses = []
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss)
            """,
            message="`losses` accumulates `loss` with its autograd graph, so every step's graph stays in memory",
            fixed="""
            losses = []
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
            """,
        ),
        Example(
            """
            class Classifier(LightningModule):
                def training_step(self, batch, batch_idx):
                    x, y = batch
                    loss = F.cross_entropy(self.net(x), y)
                    self.training_step_outputs.append(loss)
                    return loss
            """,
            message=(
                "`self.training_step_outputs` accumulates `loss` with its autograd graph, so every step's graph stays in memory"
            ),
        ),
    )


def _empties(statement, name: str) -> bool:
    """`name.clear()`, `name.reset()`, `name.clear_memory()`: the container drops what it holds."""
    if not (isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call)):
        return False
    func = statement.value.func
    return (
        isinstance(func, cst.Attribute)
        and isinstance(func.value, cst.Name)
        and func.value.value == name
        and EMPTYING_METHOD.fullmatch(func.attr.value) is not None
    )


def _stores_parameter(found: Accumulation) -> bool:
    """`used.append(p)` for `p` of `model.parameters()`: a list that holds the parameters
    themselves (leaves) keeps no step's graph; arithmetic on them (`total += p`) would."""
    statement = found.site.statement
    if not (
        isinstance(statement, cst.Expr)
        and isinstance(statement.value, cst.Call)
        and attribute_name(statement.value.func) in ("append", "extend", "insert")
    ):
        return False
    value = strip_parens(found.value)
    if not isinstance(value, cst.Name):
        return False
    bindings = found.site.function.bindings.get(value.value, ())
    return bool(bindings) and all(
        b.element_of and collection_kind(b.value) in PARAMETER_SOURCES for b in bindings
    )


def _item_constructors(value: cst.BaseExpression) -> list[cst.BaseExpression]:
    """What builds the items of a dict: `defaultdict(AverageMeter)` -> `AverageMeter`,
    `{"loss": AverageMeter(), ...}` and `{k: AverageMeter() for k in keys}` -> the calls."""
    if isinstance(value, cst.Call) and (dotted_text(value.func) or "").rpartition(".")[2] == "defaultdict":
        return [value.args[0].value] if value.args else []
    if isinstance(value, cst.Dict):
        return [element.value for element in value.elements if isinstance(element, cst.DictElement)]
    if isinstance(value, cst.DictComp):
        return [value.value]
    return []


def _unpacked_beside_the_loss(facts: FileFacts, found: Accumulation) -> bool:
    value = strip_parens(found.value)
    if not isinstance(value, cst.Name):
        return False
    function = found.site.function
    return any(
        b.element_index is not None and facts.beside_the_loss(b, function) is not None
        for b in function.bindings.get(value.value, ())
    )
