"""The stdlib `ast` of a file written for a newer Python than the one running ema-lint.

The structural facts are read with the running interpreter's `ast`, which rejects syntax
from later versions (PEP 695 type parameters and `type` aliases on Python 3.11). libcst
parses every Python 3 grammar, so such a file is parsed with libcst, the newer constructs
are rewritten to older equivalents that bind the same names (`class A[T](B)` -> `class
A(B)`, `type X = Y` -> `X = Y`), and the result is parsed again. Lines are kept; columns
after a removed type parameter list shift on that line only.
"""

from __future__ import annotations

import ast

import libcst as cst


def parse_any(source: str | bytes) -> ast.Module:
    """`ast.parse(source)`, falling back to the downgraded libcst parse; raises the
    original SyntaxError when neither parser accepts the file."""
    try:
        return ast.parse(source)
    except SyntaxError as error:
        try:
            module = cst.parse_module(source)
        except (cst.ParserSyntaxError, UnicodeDecodeError, LookupError, SyntaxError, RecursionError):
            raise error from None
        downgraded = module.visit(_Downgrade())
        return ast.parse(downgraded.bytes if isinstance(source, bytes) else downgraded.code)


class _Downgrade(cst.CSTTransformer):
    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        return updated_node.with_changes(type_parameters=None)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        return updated_node.with_changes(type_parameters=None)

    def leave_TypeAlias(self, original_node: cst.TypeAlias, updated_node: cst.TypeAlias) -> cst.Assign:
        return cst.Assign(targets=[cst.AssignTarget(updated_node.name)], value=updated_node.value)
