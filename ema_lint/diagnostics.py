"""Plain, picklable result data shared by source rules, graph passes and renderers.

Nothing here holds a CST node, a tensor or a module, so results cross process
boundaries, go into the cache and come out of `transform(model)` unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class Applicability(str, enum.Enum):
    """How much a fix may be trusted, ruff's three levels.

    SAFE: same values and gradients; only memory or time change. Applied by `fix --write`.
    UNSAFE: valid code that may change numerics, types or intended gradient flow.
        Applied only with `--unsafe-fixes`.
    DISPLAY_ONLY: a person must choose; shown as help, never applied.
    """

    SAFE = "safe"
    UNSAFE = "unsafe"
    DISPLAY_ONLY = "display-only"


@dataclass(frozen=True, order=True)
class Location:
    """A position in a source file: 1-based line, 1-based column counted in characters."""

    line: int
    column: int


@dataclass(frozen=True)
class Edit:
    """Replace the text between `start` (inclusive) and `end` (exclusive) with `content`."""

    start: Location
    end: Location
    content: str


@dataclass(frozen=True)
class RequiredImport:
    """An import a fix needs: `import module` when `name` is None, else `from module import name`."""

    module: str
    name: str | None = None


@dataclass(frozen=True)
class Fix:
    title: str
    applicability: Applicability
    edits: tuple[Edit, ...] = ()
    imports: tuple[RequiredImport, ...] = ()


@dataclass(frozen=True)
class Diagnostic:
    """One finding. `module` is the qualified submodule name (`layer3.0.bn1`) for graph findings."""

    code: str
    name: str
    message: str
    path: str
    start: Location
    end: Location
    severity: Severity
    fix: Fix | None = None
    module: str | None = None
    notes: tuple[str, ...] = field(default=())
    # for a notebook: the 1-based code cell; `start` and `end` then count within that cell
    cell: int | None = None

    def has_fix(self, applicability: Applicability) -> bool:
        return self.fix is not None and self.fix.applicability is applicability and bool(self.fix.edits)

    @property
    def fixable(self) -> bool:
        """`fix --write` applies it without `--unsafe-fixes`."""
        return self.has_fix(Applicability.SAFE)

    def sort_key(self) -> tuple:
        return (self.path, self.cell or 0, self.start, self.code, self.message)
