"""The base every source rule derives from, and the per-file context it reads.

A rule is a libcst `BatchableCSTVisitor`: the engine runs every enabled rule in one
batched traversal of the file, resolving only the metadata the enabled rules declare.
Each rule carries VALID/INVALID examples; tests run them and `ema-lint rule CODE`
prints them, so the docs cannot drift from the behaviour.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Sequence, TypeVar

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from ema_lint.diagnostics import Diagnostic, Edit, Fix, Location, Severity

if TYPE_CHECKING:
    from ema_lint.project import ProjectIndex

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """A rule example. For INVALID ones, `message` (if given) must equal the first diagnostic's
    message, and `fixed` (if given) is the whole source after applying every fix of this rule
    (safe and unsafe)."""

    code: str
    message: str | None = None
    fixed: str | None = None

    @property
    def source(self) -> str:
        return textwrap.dedent(self.code).lstrip("\n")


@dataclass
class FileContext:
    path: str
    module_name: str
    module: cst.Module
    project: "ProjectIndex"
    # the decoded source, as the positions count it; cheaper than regenerating `module.code`
    text: str = ""
    wrapper: MetadataWrapper | None = field(default=None, repr=False)
    _positions: Mapping | None = field(default=None, repr=False)
    # this file's fact collectors (see `Rule.COLLECTORS`) and the facts derived from them
    collectors: dict[type, cst.BatchableCSTVisitor] = field(default_factory=dict, repr=False)
    _derived: dict[object, object] = field(default_factory=dict, repr=False)

    def collected(self, kind: type[T]) -> T:
        """The collector of type `kind` that walked this file with the rules."""
        return self.collectors[kind]  # type: ignore[return-value]

    def derived(self, key: object, compute: Callable[[], T]) -> T:
        """`compute()` once per file, shared by every rule that asks with the same `key`."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]  # type: ignore[return-value]

    @property
    def positions(self) -> Mapping:
        """Node -> CodeRange, resolved on the first report: positions cost a full code
        generation pass, and most files parsed for a rule end with no finding."""
        if self._positions is None:
            wrapper = self.wrapper or MetadataWrapper(self.module, unsafe_skip_copy=True)
            self._positions = wrapper.resolve(PositionProvider)
        return self._positions


class Rule(cst.BatchableCSTVisitor):
    """Subclasses set the class attributes below and write the docstring as ruff does:
    `## What it does`, `## Why is this bad?`, `## Example`, `## Use instead`, `## Fix safety`.
    """

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity]
    summary: ClassVar[str]
    # Textual pre-filter: a file that contains none of these substrings cannot hold a finding
    # of this rule, so it is not parsed for it. Empty means the rule must always run. A rule
    # that sets this must be able to justify that no finding is possible without them.
    triggers: ClassVar[tuple[str, ...]] = ()
    VALID: ClassVar[Sequence[Example]] = ()
    INVALID: ClassVar[Sequence[Example]] = ()

    # Positions are not declared here: they are resolved lazily, see `FileContext.positions`.
    METADATA_DEPENDENCIES: ClassVar[tuple] = ()
    # Batchable visitors that gather per-file facts this rule reads. The engine makes one of
    # each per file, shared by every rule that names it, and runs them in the same batched
    # traversal ahead of the rules, so their `leave_Module` has run before any rule's. A
    # rule's own `visit_*` methods never hide a node from them.
    COLLECTORS: ClassVar[tuple[type[cst.BatchableCSTVisitor], ...]] = ()
    # Codes whose finding, when it covers this rule's finding, is the one to show: one finding
    # per site, declared here and applied by the engine (a rule never excludes another's site).
    SUPERSEDED_BY: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def could_report(cls, source: bytes, project: "ProjectIndex", module_name: str) -> bool:
        """The pre-filter: False only when `source` provably holds no finding of this rule.
        The default reads `triggers`; a rule whose findings can hide behind names imported
        from other checked modules overrides it and consults `project`."""
        return not cls.triggers or any(word.encode() in source for word in cls.triggers)

    @classmethod
    def structurally_possible(cls, project: "ProjectIndex", module_name: str) -> bool:
        """The pre-filter's second half, read from the file's phase-1 `ast` facts (where
        identifiers are already normalised, so it holds for non-ASCII files too). False only
        when the file provably has no statement of a shape this rule reports. Default: True."""
        return True

    def __init__(self, context: FileContext) -> None:
        super().__init__()
        self.context = context
        self.diagnostics: list[Diagnostic] = []

    def range_of(self, node: cst.CSTNode) -> CodeRange:
        return self.context.positions[node]

    def edit_replacing(self, node: cst.CSTNode, replacement: cst.CSTNode | str) -> Edit:
        """An edit that swaps `node`'s source text for `replacement` (a node or raw code)."""
        code_range = self.range_of(node)
        content = (
            replacement
            if isinstance(replacement, str)
            else self.context.module.code_for_node(replacement)
        )
        return Edit(_location(code_range.start), _location(code_range.end), content)

    def report(
        self,
        node: cst.CSTNode,
        message: str,
        *,
        fix: Fix | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        code_range = self.range_of(node)
        self.diagnostics.append(
            Diagnostic(
                code=self.code,
                name=self.name,
                message=message,
                path=self.context.path,
                start=_location(code_range.start),
                end=_location(code_range.end),
                severity=self.severity,
                fix=fix,
                notes=tuple(notes),
            )
        )


def _location(position) -> Location:
    return Location(position.line, position.column + 1)
