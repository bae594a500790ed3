"""What may carry autograd history, file-wide: `FileFacts` answers it for any expression
at any statement, from the per-function facts of `function_facts`.

One plain libcst walk per file, cached by module node, records every statement that could
be an EMA update or an accumulation together with what the rules need to judge it: the
enclosing function and class, the loops around it, whether gradient recording is off
there, and per function the local bindings, the values that are backpropagated and the
parameters that carry autograd history. Nothing is imported or executed.

What "may carry autograd history" means here (precision over recall, documented in
docs/rules-autograd.md): a value derived, without a cut, from a parameter of a
`forward`-like method, from a value that the same function backpropagates, from a
method parameter that such a value is passed to, or from iterating `.parameters()`.
Cuts: `.detach()`, `.item()`, `.tolist()`, `.numpy()`, `.data`, `.grad`, `float()`,
`int()`, `len()`, literals, `.state_dict()` / `.buffers()` elements, the output of a module
set `requires_grad_(False)` in the file, and names that are not local (modules, globals,
hyperparameters read from `self`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.expressions import (
    attribute_name,
    calls_in,
    code_of,
    collection_kind,
    creates_graph,
    data_reads,
    environment_step,
    evaluated_calls,
    indices_of,
    is_constant,
    is_grad_off_context,
    is_grad_off_decorator,
    leaves_torch,
    made_new,
    metric_key,
    metric_key_text,
    names_a_count,
    names_in,
    root_name,
    strip_parens,
)
from ema_lint.analysis.function_facts import (
    Binding,
    Call,
    Function,
    FunctionFactsCollector,
    Site,
    constructed,
    reaches_a_backward,
    returned_elements,
    returned_names,
)
from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.recurrences import Recurrence, find_recurrences
from ema_lint.analysis.torch_names import (
    CONFIGURATION_CALLS,
    CONVERTING_UFUNCS,
    CUT_ATTRIBUTES,
    CUT_METHODS,
    DETACHED_SOURCES,
    GRADIENT_NORM_NAME,
    LOGGING_CALLS,
    LOGGING_NAME,
    METRIC_NAME,
    NO_GRAPH_CALLS,
    NUMBER_CONVERTER,
    OTHER_FRAMEWORKS,
    PARAMETER_SOURCES,
    RETYPING_METHODS,
    SCALAR_CASTS,
    TENSOR_CONSTRUCTORS,
    VALUES_AND_INDICES,
)


class CrossFileFacts:
    """What the checked files say about functions one file calls (the project index, seen
    from that file); this base knows nothing, as when one file is checked alone."""

    def returns_no_graph(self, dotted: str) -> bool:
        """`dotted(...)` returns no autograd history, whatever it is given."""
        return False

    def returns_backpropagated(self, dotted: str, position: int | None) -> bool:
        """`dotted(...)` returns (at `position` of its tuple, when given) a value it backpropagated."""
        return False

    def backpropagates(self, dotted: str) -> bool:
        """`dotted(...)` backpropagates a value it returns: a call of it is a training step."""
        return False

    def only_called_with_grad_off(self, name: str) -> bool:
        """Every call of a function named `name` in the checked files runs with gradients off."""
        return False

    def called_elsewhere(self, name: str) -> bool:
        """Another checked file calls (or refers to) something named `name`."""
        return False


NO_OTHER_FILES = CrossFileFacts()


class FileFacts:
    """Everything the autograd rules read about one module."""

    def __init__(
        self, module: cst.Module, collector: "FunctionFactsCollector", other_files: CrossFileFacts | None = None
    ) -> None:
        self.module = module
        # what the checked files around this one say about the functions it calls
        self.other_files = other_files or NO_OTHER_FILES
        self.functions = collector.functions
        self.sites = collector.sites
        self._sites_of: dict[Function, list[Site]] = {}
        for site in collector.sites:
            self._sites_of.setdefault(site.function, []).append(site)
        self.calls = collector.calls
        self.class_bases = collector.class_bases
        self.numeric_names = collector.numeric_names
        self.array_names = collector.array_names
        # imports another framework and not torch: no torch autograd state in this file
        self.foreign = "torch" not in collector.imported_roots and bool(collector.imported_roots & OTHER_FRAMEWORKS)
        # a module a helper turns gradients off for is frozen, unless the file also turns them
        # back on for it (a GAN toggling its discriminator between the two steps)
        toggled_off = {code_of(module, n) for nodes, off, _, _ in collector.toggled if off for n in nodes}
        toggled_on = {code_of(module, n) for nodes, off, _, _ in collector.toggled if not off for n in nodes}
        self.frozen = {code_of(module, node) for node in collector.frozen} | (toggled_off - toggled_on)
        self._frozen_within = _bracketed_modules(module, collector.toggled, self._sites_of)
        # the function whose names are being judged, for `_parameters_frozen`
        self._judged_in: Function | None = None
        self._code: dict[int, str] = {}
        self._carrying: dict[tuple[Function, frozenset[str]], set[str]] = {}
        # (function, id of a returned value) -> whether it hands back history; cleared with `_carrying`
        self._returns_carry: dict[tuple[Function, int], bool] = {}
        # functions whose returns are being judged (recursion guard)
        self._judging: set[Function] = set()
        self._by_name: dict[tuple[str | None, str], list[Function]] = {}
        for function in collector.functions:
            if function.node is not None:
                self._by_name.setdefault((function.class_name, function.name), []).append(function)
        self._propagate_grad_free(collector.calls)
        self._mark_loops_that_train(collector.calls)
        self._mark_backpropagated_outputs()
        # after the outputs: what a caller backpropagates is the returned value, not what the
        # callee computed it from (`losses[key] = value.item()` may have made those numbers)
        returning = self._backpropagate_returns()
        # in a function whose result its caller backpropagates, every earlier binding reaches
        # that backward: the module outputs the returned loss is computed from recorded a graph
        self._mark_backpropagated_outputs(returning)
        self._propagate_graph_params(collector.calls)

    @functools.cached_property
    def recurrences(self) -> "list[Recurrence]":
        return find_recurrences(self)

    def code(self, node: cst.CSTNode) -> str:
        key = id(node)
        if key not in self._code:
            self._code[key] = code_of(self.module, node)
        return self._code[key]

    def _propagate_grad_free(self, calls: list[Call]) -> None:
        """A function runs with gradients off when it is decorated so, or when every call to it
        in this file (there is at least one) is under a grad-off context or in such a function,
        or, called nowhere in this file, when every call of its name in the checked files is
        (an EMA helper of `utils.py` the trainer calls under `no_grad()`)."""
        by_key: dict[tuple[str | None, str], list[Function]] = {}
        for function in self.functions:
            if function.node is not None:
                by_key.setdefault((function.class_name, function.name), []).append(function)
        callers: dict[int, list[Call]] = {}
        for call in calls:
            for callee in by_key.get((call.class_name, call.callee), ()):
                callers.setdefault(id(callee), []).append(call)
        for function in self.functions:
            function.grad_free = function.grad_off_decorated or (
                function.node is not None
                and id(function) not in callers
                and self.other_files.only_called_with_grad_off(function.name)
            )
        changed = True
        while changed:
            changed = False
            for function in self.functions:
                sites = callers.get(id(function))
                if function.grad_free or not sites:
                    continue
                if all(call.grad_off or call.caller.grad_free for call in sites):
                    function.grad_free = True
                    changed = True

    def _mark_loops_that_train(self, calls: list[Call]) -> None:
        """A loop runs backward when it calls, through functions of this file, one that calls
        `backward` (`for batch in loader: loss = train_step(batch)`); likewise for stepping
        an optimizer."""
        trains = {function for function in self.functions if function.backward_names}
        steps = {function for function in self.functions if function.steps_optimizer}
        for call in calls:
            if (
                call.class_name is None
                and not self._by_name.get((None, call.callee))
                and not call.grad_off
                and self.other_files.backpropagates(call.callee)
            ):
                # `total += train_batch(model, batch, optimizer)`, a step helper of another file
                for loop in call.loops:
                    loop.runs_backward = True
                trains.add(call.caller)
        changed = True
        while changed:
            changed = False
            for call in calls:
                callees = self._by_name.get((call.class_name, call.callee), ())
                if len(callees) != 1:
                    continue
                if callees[0] in trains:
                    for loop in call.loops:
                        loop.runs_backward = True
                    if call.caller not in trains:
                        trains.add(call.caller)
                        changed = True
                if callees[0] in steps:
                    for loop in call.loops:
                        loop.steps_optimizer = True
                    if call.caller not in steps:
                        call.caller.steps_optimizer = True
                        steps.add(call.caller)
                        changed = True

    def _propagate_graph_params(self, calls: list[Call]) -> None:
        by_key = {(f.class_name, f.name): f for f in self.functions if f.node is not None}
        for _ in range(3):
            changed = False
            for call in calls:
                callee = by_key.get((call.class_name, call.callee))
                if callee is None or call.grad_off or call.caller.grad_free:
                    continue
                params = [p for p in callee.params if p not in ("self", "cls")]
                for index, arg in enumerate(call.args):
                    if arg.keyword is not None:
                        name = arg.keyword.value
                    elif arg.star or index >= len(params):
                        continue
                    else:
                        name = params[index]
                    if name in callee.objects:
                        continue  # `train(model, ...)` calling `model(x)`: a module, not a tensor
                    if name not in callee.graph_params and self.may_carry_graph(arg.value, call.caller):
                        callee.graph_params.add(name)
                        changed = True
            self._forget_judgements()
            if not changed:
                return

    def _backpropagate_returns(self) -> None:
        """`loss = compute(x)` then `loss.backward()`, with `compute` a function of this file (a
        closure in the training function, a `self.` method): the names `compute` returns are
        backpropagated too, in `compute`. Returns the functions that gained names."""
        gained: list[Function] = []
        changed = True
        while changed:
            changed = False
            for function in self.functions:
                for name in list(function.backward_names):
                    for binding in function.bindings.get(name, ()):
                        if binding.element_of:
                            continue
                        value = strip_parens(binding.value)
                        callee = self._callee(value) if isinstance(value, cst.Call) else None
                        if callee is None:
                            continue
                        returned = returned_names(callee, binding.element_index)
                        if not returned <= callee.backward_names:
                            callee.backward_names |= returned
                            changed = True
                            if callee not in gained:
                                gained.append(callee)
        return gained

    def _mark_backpropagated_outputs(self, returning: list[Function] | None = None) -> None:
        """Names the backpropagated value is computed from, when bound to a call's result
        (`out = model(x)`, then `loss = criterion(out, y)`; `loss.backward()`): such a call
        recorded a graph, since a gradient flows through it. Names bound to loop elements
        (`x, y` from a loader) or to device/dtype moves (`y = y.to(device)`) are not marked.
        `returning`: functions whose returned names a caller backpropagates, after the return."""
        for function in self.functions if returning is None else returning:
            function.feeds_backward = self._feeding_backward(function)
            frontier, upstream = list(function.backward_names), set(function.backward_names)
            while frontier:
                name = frontier.pop()
                for binding in function.bindings.get(name, ()):
                    if binding.element_of or constructed(binding.value, function):
                        continue
                    if returning is None and not reaches_a_backward(binding, function):
                        # `weights = model.reweigh(weights, totals)` after the training loop
                        # feeds the next call's steps, not this call's
                        continue
                    if isinstance(strip_parens(binding.value), cst.Call) and not self._produces_graph(binding, name, function):
                        continue  # `args = parser.parse_args()`: what made the settings made no graph
                    for used in names_in(binding.value) - upstream:
                        if names_a_count(used):
                            continue  # `decode_lengths` beside the scores: sizes, integers
                        upstream.add(used)
                        frontier.append(used)
            for name in upstream - function.backward_names:
                if returning is not None and name in function.returned_names:
                    # what the function also returns is judged by its value there (a dict of
                    # losses a loop turns into `.item()` numbers before returning it)
                    continue
                bindings = function.bindings.get(name, ())
                if bindings and all(self._produces_graph(b, name, function) for b in bindings):
                    function.backward_names.add(name)
                    self._forget_judgements()

    def _feeding_backward(self, function: Function) -> set[str]:
        """The text of the names and attribute chains whose values flow, by arithmetic and
        torch functions, into what is backpropagated (`buf` for `torch.stack(buf).mean()`).
        Not through a call to an object the function holds (`model.update(w, dist)`): what
        comes out of a module or a helper is a new value, not the accumulated one."""
        held = set(function.bindings) | set(function.params) | {"self"}
        feeding: set[str] = set()
        frontier = list(function.backpropagated)
        while frontier:
            for read in data_reads(frontier.pop(), held):
                code = self.code(read)
                if code in feeding:
                    continue
                feeding.add(code)
                if isinstance(read, cst.Name):
                    # `loss = total / n` after the training loop feeds no backward of the loop
                    frontier.extend(
                        b.value
                        for b in function.bindings.get(read.value, ())
                        if not b.element_of and reaches_a_backward(b, function)
                    )
        return feeding

    def _produces_graph(self, binding: Binding, name: str, function: Function) -> bool:
        """Whether a call's result, upstream of a backpropagated value, recorded a graph. Not
        a call fed only inert values (`parse_args()`, `tyro.cli(Args)`, `max(5, int(n))`:
        configuration and counts), nor one fed NumPy values (`envs.step(a.cpu().numpy())`:
        torch modules take no NumPy arrays, so that is an environment or a metric)."""
        value = strip_parens(binding.value)
        if binding.element_of or not isinstance(value, cst.Call) or binding.grad_off:
            return False
        if attribute_name(value.func) in RETYPING_METHODS | CUT_METHODS | SCALAR_CASTS | {"next", "iter"}:
            return False  # `batch = next(loader_iter)` fetches data
        if constructed(value, function):
            return False  # `model = Net(...).to(device)`, `torch.LongTensor(labels)`: no recorded op
        if attribute_name(value.func) in CONFIGURATION_CALLS:
            return False
        arguments = self._call_inputs(value, name, function)
        if arguments and all(self._inert(a, function, {name}) for a in arguments):
            return False
        return not any(leaves_torch(a) for a in arguments)

    @staticmethod
    def _call_inputs(call: cst.Call, name: str, function: Function) -> list[cst.BaseExpression]:
        """What a call bound to `name` computes from: its arguments, and the value a method runs
        on (`criterion(out, y).mean(dim=0)`), but not the name's own earlier value (`ce =
        ce.mean()` is judged as it was), a module the function calls (`model.kl_loss()`) or an
        imported module (`tyro.cli(Args)`)."""
        inputs = [strip_parens(a.value) for a in call.args]
        if isinstance(call.func, cst.Attribute):
            receiver = strip_parens(call.func.value)
            if not isinstance(receiver, cst.Name) or (
                (receiver.value in function.bindings or receiver.value in function.params)
                and receiver.value != name
                and receiver.value not in function.objects
            ):
                inputs.append(receiver)
        return inputs

    def _numpy_valued(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """`x.cpu().numpy()`, `np.array(...)`, or a local name bound only to such values."""
        node = strip_parens(node)
        if leaves_torch(node):
            return True
        if isinstance(node, cst.Call) and (dotted_text(node.func) or "").partition(".")[0] in ("np", "numpy"):
            return True
        if isinstance(node, cst.Name) and node.value not in seen:
            bindings = function.bindings.get(node.value)
            seen.add(node.value)
            return bool(bindings) and all(
                not b.element_of and self._numpy_valued(b.value, function, seen) for b in bindings
            )
        return False

    def _inert(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """A value no graph can come from: constants, numbers cast from anything, classes,
        and names (local, else module-level) bound only to such values or to calls of them."""
        node = strip_parens(node)
        if is_constant(node):
            return True
        if isinstance(node, cst.Call):
            if isinstance(node.func, cst.Name) and node.func.value in SCALAR_CASTS:
                return True
            if attribute_name(node.func) in CUT_METHODS:
                return True
            return False
        if isinstance(node, cst.Attribute):
            return self._inert(node.value, function, seen)
        if isinstance(node, (cst.BinaryOperation, cst.UnaryOperation)):
            parts = [node.left, node.right] if isinstance(node, cst.BinaryOperation) else [node.expression]
            return all(self._inert(part, function, seen) for part in parts)
        if isinstance(node, cst.Name):
            if node.value in seen or node.value in self.class_bases:
                return True
            if node.value in function.params:
                return False
            scope = function if node.value in function.bindings else self.functions[0]
            bindings = scope.bindings.get(node.value)
            if not bindings:
                return False
            seen = seen | {node.value}
            return all(
                not binding.element_of
                and (
                    self._inert(binding.value, scope, seen)
                    or (
                        isinstance(strip_parens(binding.value), cst.Call)
                        and all(self._inert(v, scope, seen) for v in self._call_inputs(strip_parens(binding.value), node.value, scope))
                    )
                )
                for binding in bindings
            )
        return False

    def reset_before(self, site: Site, code: str) -> bool:
        """`code` is assigned earlier in every call of the site's function: in the same or an
        enclosing block, not in a branch such as a lazy `if self.avg is None:`."""
        return any(
            isinstance(other.statement, cst.Assign)
            and other.order < site.order
            and site.blocks[: len(other.blocks)] == other.blocks
            and any(self.code(strip_parens(t.target)) == code for t in other.statement.targets)
            for other in self.sites
            if other.function is site.function
        )

    def loss_cut_before(self, site: Site, name: str) -> bool:
        """Every part of `name` the function backpropagates (`out["loss"]` of
        `out["loss"].backward()`) is rebound before `site`, in its block or an enclosing one, to
        a value without history (`out["loss"] = out["loss"].detach()`): the one graph the
        record was known to hold is cut, and the rest is taken for what it is by convention,
        numbers for a logger."""
        parts = [strip_parens(b) for b in site.function.backpropagated if root_name(b) == name]
        if not parts or any(isinstance(part, cst.Name) for part in parts):
            return False
        cut = {
            self.code(strip_parens(other.statement.targets[0].target))
            for other in self.sites
            if other.function is site.function
            and isinstance(other.statement, cst.Assign)
            and len(other.statement.targets) == 1
            and other.order < site.order
            and site.blocks[: len(other.blocks)] == other.blocks
            and not self.may_carry_graph(other.statement.value, site.function)
        }
        return all(self.code(part) in cut for part in parts)

    def may_carry_graph_at(self, node: cst.BaseExpression, site: Site) -> bool:
        """`may_carry_graph`, with a plain name judged by the binding that reaches `site` when
        one dominates it (`loss.backward(); loss = loss.item(); total += loss`)."""
        node = strip_parens(node)
        function = site.function
        if isinstance(node, cst.BinaryOperation):
            return self.may_carry_graph_at(node.left, site) or self.may_carry_graph_at(node.right, site)
        if isinstance(node, cst.Name):
            if node.value in function.backward_names and self.loss_cut_before(site, node.value):
                return False
            if self._checked_by_numpy(node.value, site):
                return False
            dominating = [
                b
                for b in function.bindings.get(node.value, ())
                if b.order < site.order and site.blocks[: len(b.blocks)] == b.blocks and not b.element_of
            ]
            if any(b.augmented for b in dominating):
                dominating = []  # `loss *= n` keeps what `loss` held: no single binding decides
            reaching = max(dominating, key=lambda b: b.order) if dominating else None
            if reaching is not None and any(
                reaching.order < b.order < site.order
                # a later binding in a loop around the use, not around `reaching`, reaches the
                # use on the loop's next iteration
                or (b.order > site.order and set(b.loops) & (set(site.loops) - set(reaching.loops)))
                for b in function.bindings.get(node.value, ())
            ):
                reaching = None  # a binding in a nested block may reach the use instead
            if reaching is not None:
                if reaching.element_index is None and self._never_carries(reaching.value, function, {node.value}):
                    return False
                names: set[str] = set()
                if (
                    node.value not in function.graph_params | function.backward_names
                    and reaching.element_index is None
                    and not self._binding_sources(reaching, names, function)
                ):
                    return not names.isdisjoint(self._carrying_names(function))
        return self.may_carry_graph(node, function)

    def _checked_by_numpy(self, name: str, site: Site) -> bool:
        """An `if` around the site has certainly handed `name` itself to a NumPy ufunc that
        converts it (`if not np.isnan(v):`, `if np.isfinite(v) and ...`), which raises for a
        tensor that requires grad: where the site runs, `name` holds no graph."""
        return any(
            root_name(call.func) in self.array_names
            and attribute_name(call.func) in CONVERTING_UFUNCS
            and any(m.matches(strip_parens(a.value), m.Name(name)) for a in call.args)
            for guard in site.guards
            for call in evaluated_calls(guard)
        )

    def sites_of(self, function: Function) -> list[Site]:
        """The statements of `function`, in source order."""
        return self._sites_of.get(function, [])

    def _forget_judgements(self) -> None:
        """Some function's facts grew: every answer derived from them is recomputed."""
        self._carrying.clear()
        self._returns_carry.clear()

    @contextlib.contextmanager
    def _judging_in(self, function: Function):
        """Judge expressions as text of `function` (its requires-grad brackets apply)."""
        outer, self._judged_in = self._judged_in, function
        try:
            yield
        finally:
            self._judged_in = outer

    def may_carry_graph(self, node: cst.BaseExpression, function: Function) -> bool:
        names: set[str] = set()
        with self._judging_in(function):
            sources = self._sources(node, names)
        return sources or not names.isdisjoint(self._carrying_names(function))

    def _parameters_frozen(self, code: str) -> bool:
        """The parameters of the module `code` do not require grad where they are read: set
        so in this file, or turned off and back on around the judged function's work
        (`toggle_grad(model_src, False)` ... `toggle_grad(model_src, True)`)."""
        return code in self.frozen or code in self._frozen_within.get(self._judged_in, ())

    def _carrying_names(self, function: Function) -> set[str]:
        """The local names that may carry autograd history: the least set holding the graph
        parameters and backpropagated names, and every name with a binding that carries
        history itself or reads a name of the set. Solved once per function (a chain or cycle
        of bindings costs linear time) and kept until some function's facts grow: a binding
        to a call of this file carries what the callee's returns carry."""
        return self._carrying_from(function, frozenset(function.graph_params))

    def _carrying_from(self, function: Function, parameters: frozenset[str]) -> set[str]:
        """`_carrying_names` when exactly `parameters` receive values with history."""
        key = (function, parameters)
        if key in self._carrying:
            return self._carrying[key]
        carrying = set(parameters | function.backward_names) - function.objects
        readers: dict[str, list[str]] = {}
        for name, bindings in function.bindings.items():
            if name in carrying or name in function.objects:
                continue
            for binding in bindings:
                read: set[str] = set()
                if self._binding_sources(binding, read, function):
                    carrying.add(name)
                    break
                for source in read:
                    readers.setdefault(source, []).append(name)
        pending = list(carrying)
        while pending:
            for reader in readers.get(pending.pop(), ()):
                if reader not in carrying:
                    carrying.add(reader)
                    pending.append(reader)
        self._carrying[key] = carrying
        return carrying

    def _binding_sources(self, binding: Binding, names: set[str], function: Function) -> bool:
        """Like `_sources`, for the value one binding gives its name."""
        with self._judging_in(function):
            return self._binding_value_sources(binding, names, function)

    def _binding_value_sources(self, binding: Binding, names: set[str], function: Function) -> bool:
        if binding.element_index is not None:
            func = strip_parens(binding.value).func
            if binding.element_index == 1 and isinstance(func, cst.Attribute) and func.attr.value in VALUES_AND_INDICES:
                return False  # `_, preds = torch.max(out, 1)`: positions, integers without history
            call = strip_parens(binding.value)
            method = self._called_object_method(call, function)
            elements = returned_elements(method, binding.element_index) if method is not None else None
            if elements is not None and method not in self._judging:
                # `loss, loss_node = loss_compute(out, y, n)` with `loss_compute` an object of a
                # class of this file: what its `__call__` returns there, for these arguments
                self._judging.add(method)
                try:
                    return any(self._carries_for_call(e, method, call, function) for e in elements)
                finally:
                    self._judging.discard(method)
            callee = self._callee(call)
            elements = returned_elements(callee, binding.element_index) if callee is not None else None
            if elements is not None and all(self._converted_to_numbers(e, callee) for e in elements):
                return False  # `for k, v in losses.items(): losses[k] = v.item()`, then returned
            if elements is not None and all(self._never_carries(e, callee, set()) for e in elements):
                # `info = Tracker()` filled with `.item()` numbers, however the rest is made
                return False
            if elements is not None and callee not in self._judging:
                # `loss, info = self.compute(x)`: `info` is what `compute` returns second
                self._judging.add(callee)
                try:
                    return any(self.may_carry_graph(element, callee) for element in elements)
                finally:
                    self._judging.discard(callee)
            dotted = dotted_text(call.func)
            if dotted is not None and self.other_files.returns_backpropagated(dotted, binding.element_index):
                return True  # `loss, acc = train_batch(...)`: the loss it backpropagated
            beside_the_loss = self.beside_the_loss(binding, function)
            if beside_the_loss is not None:
                # the call recorded a graph, since a gradient flows through it, so what comes
                # beside the loss carries it too; under a logging, metric or count name
                # (`logs`, `log_vars`, `acc`, `sample_size`) it is numbers for a logger, by the
                # convention of the trainers that return it
                return not (
                    LOGGING_NAME.fullmatch(beside_the_loss)
                    or METRIC_NAME.fullmatch(beside_the_loss)
                    or names_a_count(beside_the_loss)
                )
        if binding.grad_off and not binding.element_of and made_new(strip_parens(binding.value)):
            return False  # computed with gradients off: a new tensor without history
        if binding.element_of:
            kind = collection_kind(binding.value)
            if kind in PARAMETER_SOURCES:
                owner = strip_parens(binding.value)
                while isinstance(owner, cst.Call) and attribute_name(owner.func) in ("list", "tuple"):
                    owner = owner.args[0].value
                return not self._parameters_frozen(self.code(owner.func.value))
            if kind in DETACHED_SOURCES:
                return False
            if attribute_name(strip_parens(binding.value)) == "param_groups":
                return False  # an optimizer's settings: learning rates and momenta
        elif isinstance(strip_parens(binding.value), cst.Call) and any(
            self._numpy_valued(a.value, function, set()) for a in strip_parens(binding.value).args
        ):
            return False  # `obs, reward, done, info = envs.step(action.cpu().numpy())`
        return self._sources(binding.value, names)

    def _called_object_method(self, call: cst.Call, function: Function) -> Function | None:
        """The method that runs when `call` calls an object (`loss_compute(out, y)`) that every
        binding of its name makes from one class of this file: a local built there, or a
        parameter every caller of this file passes such an object for. Its `__call__`, or for a
        module its `forward`."""
        if not isinstance(call.func, cst.Name) or self._by_name.get((None, call.func.value)):
            return None
        classes = self._constructed_classes(call.func.value, function, depth=0)
        if classes is None or len(classes) != 1:
            return None
        (class_name,) = classes
        for method in ("__call__", "forward"):
            found = self._by_name.get((class_name, method), ())
            if len(found) == 1:
                parameters = found[0].node.params
                # `__call__(self, *inputs)`: which argument lands where is not known
                if isinstance(parameters.star_arg, cst.Param) or parameters.star_kwarg is not None:
                    return None
                return found[0]
        return None

    def _constructed_classes(self, name: str, function: Function, depth: int) -> set[str] | None:
        """The classes of this file `name` holds in `function`; None when some binding or
        some caller's argument is anything else (or unknown)."""
        scope = function.scope_of(name)
        values: list[cst.BaseExpression] = []
        for binding in scope.bindings.get(name, ()):
            if binding.element_of or binding.element_index is not None:
                return None
            values.append(binding.value)
        if name in scope.params:
            callers = [c for c in self.calls if c.callee == scope.name and c.class_name is None and scope.class_name is None]
            if not callers or self.other_files.called_elsewhere(scope.name):
                return None  # other files may pass other objects
            for caller in callers:
                argument = argument_for(scope, name, caller.args, bound=False)
                if argument is None:
                    return None
                values.append((argument, caller.caller))
        classes: set[str] = set()
        for value in values:
            value, owner = value if isinstance(value, tuple) else (value, scope)
            value = strip_parens(value)
            if isinstance(value, cst.Call) and isinstance(value.func, cst.Name) and value.func.value in self.class_bases:
                classes.add(value.func.value)
            elif isinstance(value, cst.Name) and depth < 2:
                found = self._constructed_classes(value.value, owner, depth + 1)
                if found is None:
                    return None
                classes |= found
            else:
                return None
        return classes or None

    def _carries_for_call(self, element: cst.BaseExpression, method: Function, call: cst.Call, caller: Function) -> bool:
        """`element`, returned by `method`, carries history when `call` runs it: a name
        of its parameters carries what the call passes for it."""
        names: set[str] = set()
        with self._judging_in(method):
            if self._sources(element, names):
                return True
        passed_history = frozenset(
            name
            for name in method.params[1:]
            if (argument := argument_for(method, name, call.args, bound=True)) is None
            or self.may_carry_graph(argument, caller)
        )
        return not names.isdisjoint(self._carrying_from(method, passed_history))

    def _callee(self, call: cst.Call) -> Function | None:
        """The one function of this file that `f(...)` or `self.f(...)` calls, if any."""
        if isinstance(call.func, cst.Name):
            candidates = self._by_name.get((None, call.func.value), ())
        elif m.matches(call.func, m.Attribute(value=m.Name("self"))):
            candidates = [
                f for (owner, name), found in self._by_name.items() if owner is not None and name == call.func.attr.value
                for f in found
            ]
        else:
            return None
        return candidates[0] if len(candidates) == 1 else None

    def beside_the_loss(self, binding: Binding, function: Function) -> str | None:
        """The name `binding` gives, when it unpacks a call not of this file beside a
        backpropagated value (`logits, loss = model(x)`, `loss.backward()`)."""
        call = strip_parens(binding.value)
        if self._callee(call) is not None:
            return None  # read from the function itself
        names: set[str] = set()
        if not self._sources(call, names) and not names:
            return None  # `a, b = stats.tolist()`: nothing in it can carry a graph
        unpacked = [
            (name, other)
            for name, bindings in function.bindings.items()
            for other in bindings
            if other.value is binding.value and other.element_index is not None
        ]
        own = next(name for name, other in unpacked if other is binding)
        if own in function.backward_names or not any(
            name in function.backward_names for name, other in unpacked if other is not binding
        ):
            return None
        return own

    def _returned_value_carries(self, value: cst.BaseExpression, function: Function) -> bool:
        """`return value` in `function` hands back history. A name is judged by the bindings
        that reach the `return`: the last one on every path to it (an assignment in the
        `return`'s block or one around it) and any after that one, so a name rebound to
        numbers before it is returned (`stats = to_numbers(stats)`) holds numbers."""
        key = (function, id(value))
        if key not in self._returns_carry:
            self._returns_carry[key] = self._judge_return(value, function)
        return self._returns_carry[key]

    def _judge_return(self, value: cst.BaseExpression, function: Function) -> bool:
        reaching = self._reaching_bindings(value, function)
        if reaching is None:
            return self.may_carry_graph(value, function)
        first = min(b.order for b in reaching)
        if value.value in function.backward_names and any(order > first for order, _ in function.backward_calls):
            return True  # a reaching binding was backpropagated: it recorded a graph
        names: set[str] = set()
        if any(self._binding_sources(binding, names, function) for binding in reaching):
            return True
        return not names.isdisjoint(self._carrying_names(function))

    def _reaching_bindings(self, value: cst.BaseExpression, function: Function) -> list[Binding] | None:
        """The bindings of the name `value` that reach its `return`; None when `value` is no
        bare name or no binding lies on every path to the return."""
        if not isinstance(value, cst.Name) or value.value in function.params:
            return None
        returning = self._return_of(value, function)
        bindings = function.bindings.get(value.value, ())
        if returning is None or returning.loops or not bindings:
            # a `return` inside a loop is reached by the bindings later in the loop too
            return None
        before = [b for b in bindings if b.order < returning.order]
        dominating = [
            b for b in before
            if b.blocks == returning.blocks[: len(b.blocks)] and not b.augmented and not b.element_of and b.element_index is None
        ]
        if not dominating:
            return None
        last = max(dominating, key=lambda b: b.order)
        return [b for b in before if b.order >= last.order]

    def _return_of(self, value: cst.BaseExpression, function: Function) -> Site | None:
        """The `return` statement of `function` whose value is `value` or holds it in a tuple."""
        for site in self.sites_of(function):
            if isinstance(site.statement, cst.Return) and site.statement.value is not None:
                returned = strip_parens(site.statement.value)
                if returned is value or (
                    isinstance(returned, cst.Tuple) and any(e.value is value for e in returned.elements)
                ):
                    return site
        return None

    def _converted_to_numbers(self, node: cst.BaseExpression, function: Function) -> bool:
        """`node` names a dict that `function`, after every binding of it and on the way to
        the `return` that hands it back, converts entry by entry to numbers (`for key, value
        in losses.items(): losses[key] = value.item()`, the loop's whole body) and does not
        write again."""
        node = strip_parens(node)
        returning = self._return_of(node, function)
        if not isinstance(node, cst.Name) or node.value not in function.bindings or returning is None:
            return False
        last_binding = max(b.order for b in function.bindings[node.value])
        sites = self.sites_of(function)
        for site in sites:
            if not (last_binding < site.order < returning.order and _converts_entries(site, node.value)):
                continue
            loop_block = site.blocks[:-1]
            if loop_block != returning.blocks[: len(loop_block)] or returning.loops != site.loops[:-1]:
                continue  # the conversion is not on every path to the return
            if not any(
                site.order < other.order < returning.order and _writes_into(other.statement, node.value) for other in sites
            ):
                return True
        return False

    def _never_carries(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """True when `node` is made only of values that cannot hold a graph: literals, cut
        values, and local names bound only to such values (no parameter, no loop element)."""
        names: set[str] = set()
        with self._judging_in(function):
            if self._sources(node, names) or not self._only_fresh_calls(node):
                return False
        for name in names - seen:
            seen.add(name)
            if name in function.params or name in function.graph_params or name in function.backward_names:
                return False
            bindings = function.bindings.get(name)
            if not bindings:
                return False
            for binding in bindings:
                # `a, b = stats.tolist()`: judged by the whole unpacked value
                if binding.element_of:
                    return False
                if not self._never_carries(binding.value, function, seen):
                    return False
        return True

    def _only_fresh_calls(self, node: cst.BaseExpression) -> bool:
        """Every call in `node` gives a number or a new object: a cast, a cut method
        (`.item()`), a numeric library, or a class built from nothing (`Tracker()`); an
        unknown call (`closure()`) may return a graph."""
        for call in calls_in(node):
            name = attribute_name(call.func) or ""
            if isinstance(call.func, cst.Name) and (name in SCALAR_CASTS or (name[:1].isupper() and not call.args)):
                continue
            if name in CUT_METHODS or root_name(call.func) in self.numeric_names:
                continue
            return False
        return True

    def _sources(self, node: cst.BaseExpression, names: set[str]) -> bool:
        """True when `node` carries autograd history whatever its names hold; else adds to
        `names` the local names it carries history from, if they carry any."""
        node = strip_parens(node)
        if isinstance(node, cst.Name):
            if GRADIENT_NORM_NAME.fullmatch(node.value):
                return False  # measured from `.grad`, which holds no history
            names.add(node.value)
            return False
        if isinstance(node, cst.Attribute):
            if node.attr.value in CUT_ATTRIBUTES or root_name(node) == "self" or names_a_count(node.attr.value):
                return False
            return self._sources(node.value, names)
        if isinstance(node, cst.Call):
            name = attribute_name(node.func)
            if isinstance(node.func, cst.Name) and name in SCALAR_CASTS:
                return False
            if root_name(node.func) in self.numeric_names:
                return False  # `roc_auc_score(...)`, `np.mean(...)`: a NumPy array or a number
            if name in NO_GRAPH_CALLS:
                return False  # `grad_norm = clip_grad_norm_(model.parameters(), 1.0)`
            if environment_step(node):
                return False  # `obs, reward, done, info = env.step(action)`: from the simulator
            if isinstance(node.func, cst.Attribute) and isinstance(
                node.func.value, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString)
            ):
                return False  # `"loss {:.3f}".format(loss)`: a string
            dotted = dotted_text(node.func)
            if dotted in TENSOR_CONSTRUCTORS:
                return False  # `torch.tensor([loss_a, loss_b])`: a new leaf
            if dotted is not None and self.other_files.returns_no_graph(dotted):
                return False  # `acc1, acc5 = accuracy(output, target, topk=(1, 5))`
            if dotted is not None and self.other_files.returns_backpropagated(dotted, None):
                return True  # `total += train_batch(model, batch, optimizer)`: its loss, graph and all
            if isinstance(node.func, (cst.Name, cst.Attribute)) and NUMBER_CONVERTER.search((name or "").lower()):
                return False  # `du.move_to_np(v)`, `tensors_to_scalars(logs)`: arrays and numbers by name
            callee = self._callee(node)
            if callee is not None and callee.returns and callee not in self._judging:
                # a function of this file: its result carries a graph when what it returns does
                self._judging.add(callee)
                try:
                    return any(self._returned_value_carries(value, callee) for value in callee.returns)
                finally:
                    self._judging.discard(callee)
            if self.code(node.func) in self.frozen:
                return False  # a module set `requires_grad_(False)`: a frozen teacher's output
            if name == "grad" and isinstance(node.func, cst.Attribute) and not creates_graph(node):
                return False  # `torch.autograd.grad(...)` returns gradients without history
            if isinstance(node.func, cst.Attribute):
                if name in CUT_METHODS:
                    return False
                if name in PARAMETER_SOURCES:
                    return not self._parameters_frozen(self.code(node.func.value))
                if self._sources(node.func.value, names):
                    return True
                if name in RETYPING_METHODS or name in ("type", "type_as"):
                    return False  # `w.to(loss)`, `x.type(t.type())`: the argument is a dtype or device
            return any(self._sources(a.value, names) for a in node.args)
        if isinstance(node, cst.Subscript):
            if indices_of(node):
                return False  # `x.max(dim=1)[1]`: integer positions, never differentiable
            if metric_key(node):
                return False  # `outputs["accuracy"]`, `logs["n_correct"]`: numbers for a logger
            return self._sources(node.value, names)
        if isinstance(node, cst.BinaryOperation):
            return self._sources(node.left, names) or self._sources(node.right, names)
        if isinstance(node, cst.UnaryOperation):
            return self._sources(node.expression, names)
        if isinstance(node, cst.IfExp):
            if self._not_a_tensor_otherwise(node):
                return self._sources(node.body, names)
            return self._sources(node.body, names) or self._sources(node.orelse, names)
        if isinstance(node, (cst.Tuple, cst.List)):
            return any(self._sources(e.value, names) for e in node.elements)
        if isinstance(node, cst.Dict):
            # `history.append({"out": out, "loss": loss})`: a record holds what its values hold
            return any(
                self._sources(e.value, names)
                for e in node.elements
                if isinstance(e, cst.DictElement) and not metric_key_text(e.key)
            )
        return False

    def _not_a_tensor_otherwise(self, choice: cst.IfExp) -> bool:
        """`x.item() if hasattr(x, "item") else x`, `... if torch.is_tensor(x) else x`: the
        `else` value is `x` only when `x` is no tensor, so it holds no graph."""
        test = strip_parens(choice.test)
        if not isinstance(test, cst.Call) or not test.args:
            return False
        tested = self.code(strip_parens(test.args[0].value))
        if self.code(strip_parens(choice.orelse)) != tested:
            return False
        name = attribute_name(test.func)
        if name == "hasattr" and len(test.args) == 2:
            attribute = strip_parens(test.args[1].value)
            return isinstance(attribute, cst.SimpleString) and attribute.evaluated_value in ("item", "detach")
        if name == "isinstance" and len(test.args) == 2:
            return self.code(strip_parens(test.args[1].value)) in ("torch.Tensor", "Tensor")
        return name == "is_tensor" and len(test.args) == 1

    def reads(self, scope: cst.CSTNode, target: str) -> list[tuple[cst.CSTNode, bool]]:
        """Every read of the expression `target` inside `scope`, each with whether it can
        enter a differentiable computation."""
        finder = _ReadFinder(self, target)
        scope.visit(finder)
        return finder.found


class _ReadFinder(cst.CSTVisitor):
    def __init__(self, facts: FileFacts, target: str) -> None:
        self.facts = facts
        self.target = target
        self.found: list[tuple[cst.CSTNode, bool]] = []
        self._inert = 0
        self._entered: set[int] = set()

    def _inert_node(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.With):
            return any(is_grad_off_context(item.item) for item in node.items)
        if isinstance(node, cst.FunctionDef):
            return any(is_grad_off_decorator(d) for d in node.decorators)
        if isinstance(node, (cst.FormattedString, cst.Comparison)):
            return True
        if isinstance(node, cst.Call):
            name = attribute_name(node.func)
            return name in SCALAR_CASTS or name in LOGGING_CALLS
        if isinstance(node, cst.Attribute):
            return node.attr.value in CUT_METHODS | CUT_ATTRIBUTES
        return False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.AssignTarget):
            return False
        if self._inert_node(node):
            self._entered.add(id(node))
            self._inert += 1
        if isinstance(node, (cst.Name, cst.Attribute)) and self.facts.code(node) == self.target:
            self.found.append((node, self._inert == 0))
            return False
        return True

    def on_leave(self, original_node: cst.CSTNode) -> None:
        if id(original_node) in self._entered:
            self._entered.discard(id(original_node))
            self._inert -= 1


def argument_for(function: Function, parameter: str, args: Sequence[cst.Arg], *, bound: bool) -> cst.BaseExpression | None:
    """What a call with `args` passes for `parameter` of `function` (`bound`: called as a
    bound method, `self` not among `args`); None when it passes nothing known for it."""
    positional = [a for a in args if a.keyword is None and not a.star]
    for argument in args:
        if argument.keyword is not None and argument.keyword.value == parameter:
            return argument.value
    if any(a.star for a in args):
        return None
    index = function.params.index(parameter) - (1 if bound else 0)
    return positional[index].value if 0 <= index < len(positional) else None


def _bracketed_modules(module: cst.Module, toggled, sites_of: dict[Function, list[Site]]) -> dict[Function, set[str]]:
    """Per function, the modules it turns gradients off for and then back on (a helper that
    freezes both models around an EMA step), when it reads them only in between: their
    parameters hold no history there."""
    bracketed: dict[Function, set[str]] = {}
    for nodes, off, function, order in toggled:
        if not off:
            continue
        for node in nodes:
            code = code_of(module, node)
            back_on = [
                later_order
                for later_nodes, later_off, later_function, later_order in toggled
                if not later_off and later_function is function and later_order > order
                and code in {code_of(module, n) for n in later_nodes}
            ]
            if not back_on:
                continue
            # statements, and loop headers through the bindings they make
            reads = [
                *((site.order, site.statement) for site in sites_of.get(function, ()) if not _is_docstring(site.statement)),
                *((b.order, b.value) for bindings in function.bindings.values() for b in bindings),
            ]
            if not any((at < order or at > min(back_on)) and code in code_of(module, node) for at, node in reads):
                bracketed.setdefault(function, set()).add(code)
    return bracketed


def _converts_entries(site: Site, mapping: str) -> bool:
    """`site` is `mapping[key] = value.item()` (or `float(value)`, `value.detach()`...) in a
    loop `for key, value in mapping.items()`."""
    statement = site.statement
    loop = site.loops[-1].node if site.loops else None
    if not (
        isinstance(statement, cst.Assign)
        and len(statement.targets) == 1
        and isinstance(loop, cst.For)
        and isinstance(loop.target, cst.Tuple)
        and len(loop.target.elements) == 2
        and isinstance(loop.iter, cst.Call)
        and attribute_name(loop.iter.func) == "items"
        and isinstance(loop.iter.func, cst.Attribute)
        and isinstance(loop.iter.func.value, cst.Name)
        and loop.iter.func.value.value == mapping
    ):
        return False
    body = loop.body.body if isinstance(loop.body, cst.IndentedBlock) else ()
    if not (
        len(body) == 1
        and isinstance(body[0], cst.SimpleStatementLine)
        and len(body[0].body) == 1
        and body[0].body[0] is statement
    ):
        return False  # every entry, unconditionally: the store is the loop's whole body
    key, value = (strip_parens(element.value) for element in loop.target.elements)
    target = strip_parens(statement.targets[0].target)
    if not (
        isinstance(key, cst.Name)
        and isinstance(value, cst.Name)
        and isinstance(target, cst.Subscript)
        and isinstance(target.value, cst.Name)
        and target.value.value == mapping
        and len(target.slice) == 1
        and isinstance(target.slice[0].slice, cst.Index)
        and isinstance(strip_parens(target.slice[0].slice.value), cst.Name)
        and strip_parens(target.slice[0].slice.value).value == key.value
    ):
        return False
    converted = strip_parens(statement.value)
    if not isinstance(converted, cst.Call):
        return False
    func = converted.func
    if isinstance(func, cst.Attribute):
        return func.attr.value in CUT_METHODS and isinstance(func.value, cst.Name) and func.value.value == value.value
    return (
        isinstance(func, cst.Name)
        and func.value in SCALAR_CASTS
        and len(converted.args) == 1
        and isinstance(strip_parens(converted.args[0].value), cst.Name)
        and strip_parens(converted.args[0].value).value == value.value
    )


def _writes_into(statement: cst.CSTNode, mapping: str) -> bool:
    """`mapping[k] = ...`, `mapping[k] += ...` or `mapping.update(...)`/`setdefault(...)`."""
    if isinstance(statement, (cst.Assign, cst.AugAssign, cst.AnnAssign)):
        targets = [t.target for t in statement.targets] if isinstance(statement, cst.Assign) else [statement.target]
        return any(
            isinstance(strip_parens(t), cst.Subscript) and root_name(strip_parens(t)) == mapping for t in targets
        )
    if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
        func = statement.value.func
        return (
            isinstance(func, cst.Attribute)
            and func.attr.value in ("update", "setdefault", "__setitem__")
            and isinstance(func.value, cst.Name)
            and func.value.value == mapping
        )
    return False


def _is_docstring(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.Expr) and isinstance(statement.value, (cst.SimpleString, cst.ConcatenatedString))
