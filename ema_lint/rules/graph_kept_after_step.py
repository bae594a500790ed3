from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ema_lint.diagnostics import Applicability, Fix, Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import AutogradRule
from ema_lint.analysis.expressions import (
    attribute_name,
    detached,
    one_line,
    optimizer_like,
    steps_an_optimizer,
    strip_parens,
)
from ema_lint.analysis.function_facts import Site
from ema_lint.analysis.torch_names import CUT_METHODS
from ema_lint.analysis.value_flow import FileFacts

_SELF_ATTRIBUTE = m.Attribute(value=m.Name("self"), attr=m.Name())


class GraphKeptAfterStep(AutogradRule):
    """## What it does
    Finds a value computed from a trainable tensor of the object (`self.log_alpha`, created
    with `requires_grad=True` or as an `nn.Parameter`) and stored on `self` after the step's
    last `backward` or optimizer step: `self.alpha = self.log_alpha.exp()` at the end of a
    SAC update.

    ## Why is this bad?
    The stored value keeps the autograd graph that made it. Nothing in this step
    backpropagates it any more, so the graph lives on into the next step, whose loss
    (`self.alpha * log_pi`) backpropagates through it: a gradient flows into `log_alpha` from
    a loss that should treat the temperature as a constant, and a second backward through
    the same stored value fails with "Trying to backward through the graph a second time".

    ## Example
    ```python
    def update(self, batch):
        ...
        alpha_loss = -(self.log_alpha * (log_pi + self.target_entropy).detach()).mean()
        self.alpha_optim.zero_grad()
        alpha_loss.backward()
        self.alpha_optim.step()
        self.alpha = self.log_alpha.exp()
    ```

    ## Use instead
    ```python
        self.alpha = self.log_alpha.exp().detach()
    ```

    A value recomputed before its use in the same step (the alpha update placed first, the
    losses after it) is not reported: the next step computes its own.

    ## Fix safety
    Unsafe: `.detach()` stops the gradient the next step's losses sent into the trainable
    tensor, which is the point, but changes what its optimizer may see.
    """

    code = "EMA204"
    name = "graph-kept-after-step"
    severity = Severity.ERROR
    summary = "A value computed from a trainable tensor is stored after the step with its autograd graph"
    # the trainable tensor is made one in this file: `requires_grad=True` or `nn.Parameter`
    triggers = ("requires_grad", "Parameter")

    def check(self, facts: FileFacts) -> None:
        trainable = _trainable_attributes(facts.module)
        if not trainable:
            return
        by_function: dict[int, list[Site]] = {}
        for site in facts.sites:
            by_function.setdefault(id(site.function), []).append(site)
        for site in facts.sites:
            owned = trainable.get(site.function.class_name or "")
            stored = _stored_attribute(site)
            if not owned or stored is None or site.grad_off or site.function.grad_free:
                continue
            value = strip_parens(site.statement.value)
            sources = _trainable_reads(value, owned)
            if not sources or not _computed(value) or _cut(value):
                continue
            siblings = by_function[id(site.function)]
            if not _after_last_update(site, siblings) or not _read_elsewhere(facts, site, stored):
                continue
            module = self.context.module
            self.report(
                site.statement,
                f"`self.{stored}` keeps the autograd graph of `{one_line(module, value)}` after the step's "
                f"update, so the next step backpropagates through it into `self.{sources[0]}`; store it detached",
                fix=Fix(
                    f"Store `{detached(module, value)}`",
                    Applicability.UNSAFE,
                    (self.edit_replacing(site.statement.value, detached(module, value)),),
                ),
            )

    VALID = (
        Example(
            """
            class Agent:
                def __init__(self):
                    self.log_alpha = torch.zeros(1, requires_grad=True)
                    self.alpha_optim = Adam([self.log_alpha], lr=3e-4)

                def update(self, log_pi):
                    alpha_loss = -(self.log_alpha * (log_pi + 1).detach()).mean()
                    self.alpha_optim.zero_grad()
                    alpha_loss.backward()
                    self.alpha_optim.step()
                    self.alpha = self.log_alpha.exp().detach()
            """
        ),
        Example(
            """
            class Agent:
                def __init__(self):
                    self.log_alpha = torch.zeros(1, requires_grad=True)

                def update(self, log_pi, q):
                    alpha_loss = -(self.log_alpha * (log_pi + 1).detach()).mean()
                    alpha_loss.backward()
                    self.alpha_optim.step()
                    self.alpha = self.log_alpha.exp()
                    policy_loss = (self.alpha * log_pi - q).mean()
                    policy_loss.backward()
                    self.policy_optim.step()
            """
        ),
    )
    INVALID = (
        Example(
            """
            class Agent:
                def __init__(self):
                    self.log_alpha = torch.zeros(1, requires_grad=True)
                    self.alpha = self.log_alpha.exp()

                def update(self, log_pi, q):
                    policy_loss = (self.alpha * log_pi - q).mean()
                    policy_loss.backward()
                    self.policy_optim.step()
                    alpha_loss = -(self.log_alpha * (log_pi + 1).detach()).mean()
                    self.alpha_optim.zero_grad()
                    alpha_loss.backward()
                    self.alpha_optim.step()
                    self.alpha = self.log_alpha.exp()
            """,
            message=(
                "`self.alpha` keeps the autograd graph of `self.log_alpha.exp()` after the step's update, so the "
                "next step backpropagates through it into `self.log_alpha`; store it detached"
            ),
            fixed="""
            class Agent:
                def __init__(self):
                    self.log_alpha = torch.zeros(1, requires_grad=True)
                    self.alpha = self.log_alpha.exp()

                def update(self, log_pi, q):
                    policy_loss = (self.alpha * log_pi - q).mean()
                    policy_loss.backward()
                    self.policy_optim.step()
                    alpha_loss = -(self.log_alpha * (log_pi + 1).detach()).mean()
                    self.alpha_optim.zero_grad()
                    alpha_loss.backward()
                    self.alpha_optim.step()
                    self.alpha = self.log_alpha.exp().detach()
            """,
        ),
    )


def _trainable_attributes(module: cst.Module) -> dict[str, set[str]]:
    """Per class, the `self` attributes made trainable tensors in its methods:
    `torch.zeros(1, requires_grad=True)`, `nn.Parameter(...)`."""
    found: dict[str, set[str]] = {}
    for klass in m.findall(module, m.ClassDef()):
        for assign in m.findall(klass.body, m.Assign(targets=[m.AssignTarget(target=_SELF_ATTRIBUTE)])):
            value = strip_parens(assign.value)
            flags = [a.value for a in value.args if a.keyword is not None and a.keyword.value == "requires_grad"] if isinstance(value, cst.Call) else []
            if isinstance(value, cst.Call) and (
                (attribute_name(value.func) == "Parameter" and not any(m.matches(f, m.Name("False")) for f in flags))
                or any(m.matches(f, m.Name("True")) for f in flags)
            ):
                found.setdefault(klass.name.value, set()).add(assign.targets[0].target.attr.value)
    return found


def _stored_attribute(site: Site) -> str | None:
    statement = site.statement
    if isinstance(statement, cst.Assign) and len(statement.targets) == 1:
        target = strip_parens(statement.targets[0].target)
        if m.matches(target, _SELF_ATTRIBUTE):
            return target.attr.value
    return None


def _trainable_reads(value: cst.BaseExpression, owned: set[str]) -> list[str]:
    return [node.attr.value for node in m.findall(value, _SELF_ATTRIBUTE) if node.attr.value in owned]


def _computed(value: cst.BaseExpression) -> bool:
    """A new tensor made from the trainable one (`exp()`, `softplus(...)`, `a * b`), not the
    leaf itself, which holds no graph."""
    return isinstance(value, (cst.Call, cst.BinaryOperation, cst.UnaryOperation))


def _cut(value: cst.BaseExpression) -> bool:
    """The value holds no graph: a cut anywhere in it (`.detach()`, `.item()`), a number cast
    (`float(...)`), or a read through `.data`."""
    if m.findall(value, m.Attribute(attr=m.Name("data"))):
        return True
    return any(
        attribute_name(call.func) in CUT_METHODS or m.matches(call.func, m.Name("float") | m.Name("int") | m.Name("bool"))
        for call in m.findall(value, m.Call())
    )


def _updates(site: Site) -> bool:
    """A `backward`, an optimizer step, or a helper handed an optimizer
    (`self.take_optimisation_step(self.alpha_optim, None, alpha_loss)`)."""
    statement = site.statement
    if steps_an_optimizer(statement):
        return True
    return any(
        attribute_name(call.func) == "backward" or any(optimizer_like(a.value) for a in call.args)
        for call in m.findall(statement, m.Call())
    )


def _after_last_update(site: Site, siblings: list[Site]) -> bool:
    """An update (a `backward` or an optimizer step) runs before `site` on its path, and no
    update runs after it in the function: nothing in this step consumes the stored graph."""
    before = any(other.order < site.order and site.same_path(other) and _updates(other) for other in siblings)
    after = any(other.order > site.order and _updates(other) for other in siblings)
    return before and not after


def _read_elsewhere(facts: FileFacts, site: Site, stored: str) -> bool:
    """`self.<stored>` is read by another statement of the class: something uses the value."""
    for other in facts.sites:
        if other is site or other.function.class_name != site.function.class_name:
            continue
        statement = other.statement
        reads = statement.value if isinstance(statement, (cst.Assign, cst.AugAssign, cst.Expr, cst.Return)) else None
        if reads is None:
            continue
        if any(node.attr.value == stored for node in m.findall(reads, _SELF_ATTRIBUTE)):
            return True
    return False
