"""The stdlib `ast` of a file written for a newer Python than the one running ema-lint.

The structural facts are read with the running interpreter's `ast`, which rejects syntax
from later versions (PEP 695 type parameters and `type` aliases on Python 3.11). libcst
parses every Python 3 grammar, so such a file is parsed with libcst, the newer constructs
are rewritten to older equivalents that bind the same names (`class A[T](B)` -> `class
A(B)`, `type X = Y` -> `X = Y`), and the result is parsed again. Lines are kept; columns
after a removed type parameter list shift on that line only.

libcst's native parser recurses once per operand of a chain (`a and a and ...`, `- - - a`,
`lambda: lambda: ...`, adjacent strings) and per bracket, and overflows an 8 MiB stack at a few
thousand levels with a segfault; measured on libcst 1.x: 1,350 brackets, 2,700 adjacent strings,
3,100 lambdas, 7,300 `and` operands, 8,300 unary minuses. `may_crash_libcst` tells the files
that could hold so deep a statement, so that they are parsed where a crash costs only them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

import libcst as cst

# libcst crashed at no fewer than 2,700 levels of any construct but brackets (which CPython
# bounds at 200, and which cost at most 3.4 KiB of stack a level); a quarter of that depth is
# safe, and a statement shorter than LONGEST_SAFE_STATEMENT characters is never measured
LONGEST_SAFE_STATEMENT = 2_000
MOST_SAFE_DEPTH = 700


def parse_any(source: str | bytes) -> ast.Module:
    """`ast.parse(source)`, falling back to the downgraded libcst parse; raises the
    original SyntaxError when neither parser accepts the file, or libcst might crash on it."""
    try:
        return ast.parse(source)
    except SyntaxError as error:
        if _deep_in_tokens(source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source):
            raise error from None
        try:
            downgraded = cst.parse_module(source).visit(_Downgrade())
            return ast.parse(downgraded.bytes if isinstance(source, bytes) else downgraded.code)
        except Exception:  # noqa: BLE001 - whatever libcst or the downgrade trips on, the file has the reference parser's error
            raise error from None


class _Downgrade(cst.CSTTransformer):
    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        return updated_node.with_changes(type_parameters=None)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        return updated_node.with_changes(type_parameters=None)

    def leave_TypeAlias(self, original_node: cst.TypeAlias, updated_node: cst.TypeAlias) -> cst.Assign:
        return cst.Assign(targets=[cst.AssignTarget(updated_node.name)], value=updated_node.value)

    def leave_FormattedString(
        self, original_node: cst.FormattedString, updated_node: cst.FormattedString
    ) -> cst.BaseExpression:
        # PEP 701 f-strings (quotes reused inside, 3.12) do not parse before 3.12: each
        # becomes `str((expressions...))`, a string made from the same names, over as
        # many lines as the f-string took so that later lines keep their numbers
        return _as_str_call(_expressions(updated_node), _lines_of(original_node))

    def leave_TemplatedString(
        self, original_node: cst.TemplatedString, updated_node: cst.TemplatedString
    ) -> cst.BaseExpression:
        # PEP 750 template strings (3.14), the same way
        return _as_str_call(_expressions(updated_node), _lines_of(original_node))

    def visit_ConcatenatedString(self, node: cst.ConcatenatedString) -> bool:
        return False  # a concatenation holds only strings: it is replaced as a whole

    def leave_ConcatenatedString(
        self, original_node: cst.ConcatenatedString, updated_node: cst.ConcatenatedString
    ) -> cst.BaseExpression:
        formatted = [
            part for part in _concatenated(original_node) if isinstance(part, (cst.FormattedString, cst.TemplatedString))
        ]
        if not formatted:
            return updated_node
        values = [value.visit(self) for part in formatted for value in _expressions(part)]
        return _as_str_call(values, _lines_of(original_node))


def _concatenated(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.ConcatenatedString):
        return _concatenated(node.left) + _concatenated(node.right)
    return [node]


def _expressions(node: cst.FormattedString | cst.TemplatedString) -> list[cst.BaseExpression]:
    found = []
    for part in node.parts:
        if isinstance(part, (cst.FormattedStringExpression, cst.TemplatedStringExpression)):
            found.append(part.expression)
            found.extend(e for spec in part.format_spec or () for e in _expressions(cst.FormattedString([spec])))
    return found


def _lines_of(node: cst.CSTNode) -> int:
    return cst.Module([]).code_for_node(node).count("\n")


def _as_str_call(values: list[cst.BaseExpression], lines: int) -> cst.BaseExpression:
    text = "".join(cst.Module([]).code_for_node(value) + ", " for value in values)
    padding = "\n" * max(0, lines - text.count("\n"))
    return cst.parse_expression(f"str(({text}{padding}))")


def may_crash_libcst(source: bytes, tree: ast.Module | None = None) -> bool:
    """Whether a statement of `source` (for a compound statement, its header) may nest deep
    enough to crash libcst's parser; `tree`: its `parse_any` tree where the caller has it."""
    if tree is None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return _deep_in_tokens(source)
    # the reference parser ends a line at CR LF, LF or a lone CR, as `bytes.splitlines` does
    line_starts = [0, *(match.end() for match in re.finditer(rb"\r\n|\r|\n", source))]

    def start(node: ast.AST) -> int:
        # a `case` has no position of its own; its pattern starts it
        node = node.pattern if isinstance(node, ast.match_case) else node
        return line_starts[node.lineno - 1] + node.col_offset

    def end(node: ast.AST) -> int:
        return line_starts[node.end_lineno - 1] + node.end_col_offset

    statements = list(tree.body)
    while statements:
        statement = statements.pop()
        nested = [child for name in _BODIES for child in getattr(statement, name, ())]
        header_end = start(nested[0]) if nested else end(statement)
        first = statement.decorator_list[0] if getattr(statement, "decorator_list", None) else statement
        if header_end - start(first) > LONGEST_SAFE_STATEMENT:
            header = [value for name, value in ast.iter_fields(statement) if name not in _BODIES]
            if _depth_bound(header, source, start, end) > MOST_SAFE_DEPTH:
                return True
        statements.extend(nested)
    return False


def _deep_in_tokens(source: bytes) -> bool:
    """For a file the reference parser rejects (newer syntax, Python 2): whether its syntax may
    nest deeper than MOST_SAFE_DEPTH. The depth at a token is bounded by the tokens on the
    path to it: for each open bracket, the tokens since its last comma (items, arguments and
    keys are read in a loop, not nested), and the `elif` clauses of one `if` (each nests the
    next). Brackets deeper than CPython allows count too. A file the tokenizer rejects may
    hold anything."""
    if len(source) <= LONGEST_SAFE_STATEMENT:
        return False
    runs, path = [0], 0  # tokens since the last comma per open bracket, and their sum
    elifs: dict[int, int] = {}  # indentation level -> `elif` clauses of the current `if`
    level, line_start = 0, True
    try:
        for token in tokenize.tokenize(io.BytesIO(source).readline):
            kind, text = token.type, token.string
            if kind in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                runs, path, line_start = [0], 0, True
                level += (kind == tokenize.INDENT) - (kind == tokenize.DEDENT)
                continue
            if kind in _LAYOUT:
                continue
            if line_start:
                line_start = False
                if text != "else":
                    elifs[level] = elifs.get(level, 0) + 1 if text == "elif" else 0
            if kind == tokenize.OP and text in ",;":
                path -= runs[-1]
                runs[-1] = 0
            elif kind == tokenize.OP and text in ")]}" and len(runs) > 1:
                path -= runs.pop()
            else:
                runs[-1] += 1
                path += 1
                if kind == tokenize.OP and text in "([{":
                    runs.append(0)
            if path > MOST_SAFE_DEPTH or len(runs) > MOST_BRACKETS or elifs.get(level, 0) > MOST_SAFE_DEPTH:
                return True
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, LookupError):
        return True
    return False


_LAYOUT = (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER)
MOST_BRACKETS = 200
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _depth_bound(fields: list, source: bytes, start, end) -> int:
    """An upper bound of how deep libcst nests the syntax in `fields`: the longest path down
    its tree, where a boolean operation's operands add one level each and a string one level
    per pair of quotes (the reference parser keeps `a and b and c` flat and merges adjacent
    strings into one node; libcst nests both). Siblings (arguments, elements, keys) do not add
    up: libcst reads those in a loop."""
    deepest = 0
    pending = [(child, 1) for child in _nodes_in(fields)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = source[start(node) : end(node)]
            depth += (text.count(b"'") + text.count(b'"')) // 2
        deepest = max(deepest, depth)
        below = depth + (len(node.values) if isinstance(node, ast.BoolOp) else 1)
        pending.extend((child, below) for child in _nodes_in(value for _, value in ast.iter_fields(node)))
    return deepest


def _nodes_in(values) -> list[ast.AST]:
    found = []
    for value in values:
        if isinstance(value, ast.AST):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, ast.AST))
    return found
