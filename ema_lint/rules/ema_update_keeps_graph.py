from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ema_lint.diagnostics import Applicability, Fix, RequiredImport, Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import RecurrenceRule
from ema_lint.analysis.expressions import one_line, detached, is_atom, root_name, strip_parens, through_data
from ema_lint.analysis.recurrences import Recurrence
from ema_lint.analysis.value_flow import FileFacts
from ema_lint.rules._parameter_loops import parameter_loop

TRACE_NOTE = (
    "`ema_lint.runtime.DifferentiableEMA(decay, mode=\"trace\")` keeps the exact gradient through "
    "the whole average with bounded memory, if that gradient is wanted"
)


class EmaUpdateKeepsGraph(RecurrenceRule):
    """## What it does
    Finds state that lives across training steps (a `self.` attribute or buffer, a variable
    carried across iterations of a training loop, an EMA model's parameters) updated by an
    exponential-moving-average recurrence whose new term still carries autograd history.

    ## Why is this bad?
    `avg = d * avg + (1 - d) * x` with `x` attached to this step's graph links the new `avg` to
    that graph, and the next step links it again: the chain of graphs grows every step, so
    memory grows without bound, and a later `backward()` through `avg` fails with "Trying to
    backward through the graph a second time" or sends gradients into old steps.

    ## Example
    ```python
    class RunningMean(nn.Module):
        def forward(self, x):
            self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
            return x - self.mean.detach()
    ```

    ## Use instead
    ```python
    class RunningMean(nn.Module):
        def forward(self, x):
            self.mean = 0.9 * self.mean + 0.1 * x.mean(0).detach()
            return x - self.mean.detach()
    ```
    or update under `torch.no_grad()`. When the average is meant to feed the loss, use
    `ema_lint.runtime.ema_update(avg, x, decay, mode="straight_through")` (gradient of the
    current term only) or `DifferentiableEMA(decay, mode="trace")` (exact gradient).

    ## Fix safety
    Detaching the new term is safe when the state is never read by a differentiable
    computation (only logged, or read under `no_grad` / `.item()` / `.detach()`): values are
    identical and no gradient changes. Otherwise the fix is unsafe, because it cuts a gradient
    path that exists today. When the state is read again in the same function the fix becomes
    `ema_update(..., mode="straight_through")`, unsafe too: its gradient is the current term's.

    Recognised cuts: `.detach()`, `.item()`, `.data`, `.grad`, `float()`, `with torch.no_grad()`,
    `torch.inference_mode()`, `torch.set_grad_enabled(False)`, those as decorators, methods only
    called from such contexts, and parameters of modules set `requires_grad_(False)`.
    """

    code = "EMA201"
    name = "ema-update-keeps-graph"
    severity = Severity.ERROR
    summary = "EMA state updated from a value that still carries autograd history"
    # A finding needs a value that may carry autograd history, and `_autograd` only admits
    # four sources of one: a parameter of a forward-like method (its name is in the file), a
    # backpropagated value (`backward`), a `.parameters()` element, or a method parameter fed
    # by one of those. Every finding's file therefore contains one of these words.
    triggers = ("forward", "backward", "parameters", "__call__", "training_step", "compute_loss")

    def check(self, facts: FileFacts) -> None:
        for recurrence in facts.recurrences:
            if self._keeps_graph(facts, recurrence):
                self._report(facts, recurrence)

    def _keeps_graph(self, facts: FileFacts, recurrence: Recurrence) -> bool:
        site = recurrence.site
        if site.grad_off or site.function.grad_free or site.function.name == "__init__":
            return False
        if through_data(recurrence.state):
            return False  # the write bypasses autograd; EMA203 reports it
        if not facts.may_carry_graph_at(recurrence.new_term, site):
            return False
        if self._cut_before(facts, recurrence):
            return False
        return self._persistent(facts, recurrence)

    @staticmethod
    def _cut_before(facts: FileFacts, recurrence: Recurrence) -> bool:
        """`self.sums.detach_()` earlier in the same call: the state's history ends there every
        step, so at most one step's graph is ever kept."""
        site = recurrence.site
        code = facts.code(strip_parens(recurrence.state))
        return any(
            other.function is site.function
            and other.order < site.order
            and isinstance(other.statement, cst.Expr)
            and m.matches(other.statement.value, m.Call(func=m.Attribute(attr=m.Name("detach_")), args=[]))
            and facts.code(strip_parens(other.statement.value.func.value)) == code
            for other in facts.sites
        )

    def _persistent(self, facts: FileFacts, recurrence: Recurrence) -> bool:
        state = strip_parens(recurrence.state)
        site = recurrence.site
        if root_name(state) == "self" and isinstance(state, cst.Attribute):
            # re-initialised in every call: a recurrence over a sequence (BPTT)
            return not facts.reset_before(site, facts.code(state))
        if isinstance(state, cst.Name):
            bindings = site.function.bindings.get(state.value, ())
            for loop in site.loops:
                if loop.runs_backward and any(loop not in b.loops for b in bindings if not b.element_of):
                    return True
            return parameter_loop(facts, recurrence) is not None
        return False

    def _report(self, facts: FileFacts, recurrence: Recurrence) -> None:
        module = self.context.module
        state = one_line(module, strip_parens(recurrence.state))
        sample = one_line(module, strip_parens(recurrence.sample))
        message = f"`{state}` is updated from `{sample}` without cutting its graph, so it keeps autograd history across steps"
        fix, notes = self._fix(facts, recurrence)
        self.report(recurrence.statement, message, fix=fix, notes=notes)

    def _fix(self, facts: FileFacts, recurrence: Recurrence) -> tuple[Fix, tuple[str, ...]]:
        detach = self.edit_replacing(recurrence.sample, detached(self.context.module, recurrence.sample))
        title = f"Detach `{one_line(self.context.module, strip_parens(recurrence.sample))}`"
        if parameter_loop(facts, recurrence) is not None:
            # an EMA model's tensors are read by its forward, which this file may not show
            return Fix(title, Applicability.UNSAFE, (detach,)), (TRACE_NOTE,)
        reads = self._differentiable_reads(facts, recurrence)
        if not reads:
            return Fix(title, Applicability.SAFE, (detach,)), ()
        site = recurrence.site
        later_here = any(
            read.order > site.order and read.same_path(site) and not self._hands_back(facts, read, recurrence)
            for read in reads
            if read is not None
        )
        whole_value = isinstance(recurrence.statement, cst.Assign) and not isinstance(
            strip_parens(recurrence.statement.value), cst.IfExp
        )
        if (
            later_here
            and whole_value
            and recurrence.form in ("affine", "lerp")
            and self._exact_weight(facts, recurrence)
        ):
            module = self.context.module
            state = module.code_for_node(strip_parens(recurrence.state))
            if recurrence.decay is not None:
                decay = module.code_for_node(strip_parens(recurrence.decay))
            elif is_atom(strip_parens(recurrence.weight)) or isinstance(
                strip_parens(recurrence.weight), (cst.Integer, cst.Float)
            ):
                decay = f"1 - {module.code_for_node(strip_parens(recurrence.weight))}"
            else:
                decay = f"1 - ({module.code_for_node(strip_parens(recurrence.weight))})"
            sample = module.code_for_node(strip_parens(recurrence.sample))
            replacement = f'{state} = ema_update({state}, {sample}, {decay}, mode="straight_through")'
            return (
                Fix(
                    "Use `ema_update(..., mode=\"straight_through\")`",
                    Applicability.UNSAFE,
                    (self.edit_replacing(recurrence.statement, replacement),),
                    (RequiredImport("ema_lint.runtime", "ema_update"),),
                ),
                (TRACE_NOTE,),
            )
        return Fix(title, Applicability.UNSAFE, (detach,)), (TRACE_NOTE,)

    @staticmethod
    def _hands_back(facts: FileFacts, read, recurrence: Recurrence) -> bool:
        """`return avg` (alone or in a tuple) passes the average on without computing with it."""
        statement = read.statement
        if not isinstance(statement, cst.Return) or statement.value is None:
            return False
        value = strip_parens(statement.value)
        parts = [e.value for e in value.elements] if isinstance(value, cst.Tuple) else [value]
        code = facts.code(strip_parens(recurrence.state))
        return any(facts.code(strip_parens(part)) == code for part in parts)

    @staticmethod
    def _exact_weight(facts: FileFacts, recurrence: Recurrence) -> bool:
        """The sample's weight is `1 - decay` as written (or the recurrence is a lerp)."""
        if recurrence.form == "lerp":
            return recurrence.weight is not None
        weight = recurrence.weight
        if weight is None or recurrence.decay is None:
            return False
        weight = strip_parens(weight)
        return (
            isinstance(weight, cst.BinaryOperation)
            and isinstance(weight.operator, cst.Subtract)
            and isinstance(weight.left, (cst.Integer, cst.Float))
            and float(weight.left.value) == 1.0
            and facts.code(strip_parens(weight.right)) == facts.code(strip_parens(recurrence.decay))
        )

    def _differentiable_reads(self, facts: FileFacts, recurrence: Recurrence) -> list:
        """The statements that read the state where a gradient could flow (None: a `return`
        hands it to the caller).

        A `self.` attribute is looked up in every method of the module; a local in its function.
        Reads in the state's own update statements do not count.
        """
        state = strip_parens(recurrence.state)
        code = facts.code(state)
        site = recurrence.site
        own = [r.statement for r in facts.recurrences if facts.code(strip_parens(r.state)) == code]
        if root_name(state) == "self":
            sites = [s for s in facts.sites if s.function.class_name == site.function.class_name]
        else:
            sites = [s for s in facts.sites if s.function is site.function]
        found = []
        for other in sites:
            if other.grad_off or other.function.grad_free or any(other.statement is o for o in own):
                continue
            if any(differentiable for _, differentiable in facts.reads(other.statement, code)):
                found.append(other)
        if isinstance(state, cst.Name) and state.value in site.function.returned_names:
            found.append(None)
        return found

    VALID = (
        Example(
            """
            class RunningMean(nn.Module):
                def forward(self, x):
                    with torch.no_grad():
                        self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
                    return x - self.mean
            """
        ),
        Example(
            """
            class RunningMean(nn.Module):
                def forward(self, x):
                    self.mean.mul_(0.9).add_(x.mean(0).detach(), alpha=0.1)
                    return x - self.mean
            """
        ),
        Example(
            """
            class Smoother(nn.Module):
                def forward(self, xs):
                    self.h = xs[0]
                    for x in xs[1:]:
                        self.h = 0.5 * self.h + 0.5 * x
                    return self.h
            """
        ),
    )
    INVALID = (
        Example(
            """
            class RunningMean(nn.Module):
                def forward(self, x):
                    self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
                    return x
            """,
            message="`self.mean` is updated from `x.mean(0)` without cutting its graph, so it keeps autograd history across steps",
            fixed="""
            class RunningMean(nn.Module):
                def forward(self, x):
                    self.mean = 0.9 * self.mean + 0.1 * x.mean(0).detach()
                    return x
            """,
        ),
        Example(
            """
            smooth_loss = 0.0
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                smooth_loss = 0.98 * smooth_loss + 0.02 * loss
            """,
            message="`smooth_loss` is updated from `loss` without cutting its graph, so it keeps autograd history across steps",
        ),
    )
