"""The syntax tree of a class's definition, for reading a model's source without running it.

`inspect.getsourcelines` re-parses the whole module for every class it is asked about,
which is seconds on a Hugging Face modeling file; each file is parsed once here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache


@functools.lru_cache(maxsize=None)
def _module_tree(path: str) -> ast.Module | None:
    source = "".join(linecache.getlines(path))
    try:
        return ast.parse(source) if source else None
    except (SyntaxError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def class_definition(cls: type) -> tuple[ast.ClassDef, str] | None:
    """`cls`'s `ClassDef` (line numbers of its file) and the file, or None when the source is
    unavailable or the class is defined inside a function."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return None
    if path is None or "<locals>" in cls.__qualname__:
        return None
    tree = _module_tree(path)
    scope: list[ast.stmt] = tree.body if tree is not None else []
    definition = None
    for part in cls.__qualname__.split("."):
        definition = next((n for n in scope if isinstance(n, ast.ClassDef) and n.name == part), None)
        if definition is None:
            return None
        scope = definition.body
    return (definition, path) if definition is not None else None
