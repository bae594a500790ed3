"""Project-wide facts computed once per run, before any rule looks at a file.

Rules that must see across files (which classes, defined anywhere in the checked tree,
hold a running-stat module; what a name imported from a sibling module is) read them
from `FileContext.project`. Facts are extracted per file with the stdlib `ast` parser,
which is several times faster than libcst and never imports the code; each file's facts
are plain data, so they are computed in worker processes and cached by content hash.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModuleFacts:
    """What one module contributes to the project index."""

    module_name: str
    # local name -> fully qualified name, for every `import` / `from ... import` at any level
    imports: dict[str, str] = field(default_factory=dict)
    # names of classes defined at module level
    classes: tuple[str, ...] = ()


@dataclass
class ProjectIndex:
    modules: dict[str, ModuleFacts] = field(default_factory=dict)

    @classmethod
    def from_facts(cls, facts: list[ModuleFacts]) -> "ProjectIndex":
        return cls({f.module_name: f for f in facts})


def summarize(module_name: str, source: bytes) -> ModuleFacts:
    """Facts for one file. Raises SyntaxError (or ValueError for NUL bytes) when it does not parse."""
    tree = ast.parse(source)
    imports: dict[str, str] = {}
    classes: list[str] = []
    package = module_name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    imports[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_module(package, node.module, node.level)
            for alias in node.names:
                if alias.name != "*":
                    imports[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes.append(node.name)
    return ModuleFacts(module_name, imports, tuple(classes))


def _absolute_module(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if module:
        parts.append(module)
    return ".".join(parts)


def module_name_for(path: str, root: str) -> str:
    """Dotted module name of `path` relative to `root` (`pkg/sub/mod.py` -> `pkg.sub.mod`)."""
    import os

    relative = os.path.relpath(path, root)
    parts = relative.replace(os.sep, "/").split("/")
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(part for part in parts if part not in ("", ".", ".."))
