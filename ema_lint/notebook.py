"""Jupyter notebooks as Python source, and back.

The code cells become one Python text that the rules check like any file: IPython magics
(`%time`, `!pip install`, `obj?`) become `pass` placeholders so the text parses, cells whose
cell magic makes them another language (`%%bash`) are left out, and a comment line marks
where each cell after the first begins. Findings map back to `cell N` (counting code cells,
as ruff does) and a line within it; a fixed text splits back along the markers, with every
placeholder given back its magic.

A notebook is rewritten only when serialising its JSON again reproduces the file byte for
byte (Jupyter's own layout, or any `json.dumps` layout tried here), so outputs, metadata and
formatting stay exactly as they were; otherwise fixing it is refused with the reason.
Reading a notebook is `json.loads`: nothing in it is executed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ema_lint.diagnostics import Diagnostic, Edit, Fix, Location

SUFFIX = ".ipynb"
_MAGIC_PLACEHOLDER = "pass  # ema-lint: IPython magic"
_CELL_MARKER = "# ema-lint: cell {}"
_CELL_MARKER_LINE = re.compile(r"^# ema-lint: cell (\d+)\r?\n", re.MULTILINE)
# cell magics whose body is still Python: only the `%%` line is a placeholder
_PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
# `x = !ls`, `x = %time f()`: an assignment whose right side is a magic
_MAGIC_ASSIGNMENT = re.compile(r"^\s*[\w.\[\], ]+=\s*[%!]")
_INDENT = re.compile(r"^[ \t]*")


def is_notebook(path: str) -> bool:
    return path.endswith(SUFFIX)


class NotebookError(ValueError):
    """The file is not a notebook this tool can read or write."""


class NotPython(NotebookError):
    """A notebook of another language (R, Julia): skipped, as ruff skips it."""


@dataclass(frozen=True)
class _Cell:
    index: int  # position in the notebook's `cells` list
    number: int  # 1-based among code cells, as shown to users
    text: str  # the cell's source as one string
    is_python: bool
    as_list: bool  # the JSON held the source as a list of lines


@dataclass(frozen=True)
class CellMap:
    """Where each code cell starts in the Python text: enough to map findings, picklable."""

    starts: tuple[tuple[int, int], ...]  # (first Python line, cell number), ascending

    def locate(self, location: Location) -> tuple[int, Location]:
        cell, first = 1, 1
        for start, number in self.starts:
            if start > location.line:
                break
            cell, first = number, start
        return cell, Location(location.line - first + 1, location.column)

    def map_diagnostic(self, diagnostic: Diagnostic) -> Diagnostic:
        """`diagnostic` with its positions (and its fix's edits) counted within its cell."""
        cell, start = self.locate(diagnostic.start)
        end_cell, end = self.locate(diagnostic.end)
        if end_cell != cell:
            end = Location(start.line, start.column)
        fix = diagnostic.fix
        if fix is not None:
            edits = tuple(Edit(self.locate(e.start)[1], self.locate(e.end)[1], e.content) for e in fix.edits)
            fix = Fix(fix.title, fix.applicability, edits, fix.imports)
        return Diagnostic(
            diagnostic.code,
            diagnostic.name,
            diagnostic.message,
            diagnostic.path,
            start,
            end,
            diagnostic.severity,
            fix,
            diagnostic.module,
            diagnostic.notes,
            cell=cell,
        )


class Notebook:
    """One notebook file: its JSON document, its code cells and the layout it was written in."""

    def __init__(self, raw: bytes):
        try:
            self.document = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise NotebookError(f"not valid notebook JSON: {error}") from error
        cells = self.document.get("cells") if isinstance(self.document, dict) else None
        if not isinstance(cells, list):
            raise NotebookError("no `cells` list, so not an nbformat 4 notebook")
        language = _kernel_language(self.document)
        if language not in (None, "python"):
            raise NotPython(f"a {language} notebook, not Python; not checked")
        self.raw = raw
        self.cells = self._code_cells(cells)

    @staticmethod
    def _code_cells(cells: list) -> list[_Cell]:
        found = []
        for index, cell in enumerate(cells):
            if not isinstance(cell, dict) or cell.get("cell_type") != "code":
                continue
            source = cell.get("source", "")
            as_list = isinstance(source, list)
            if as_list and all(isinstance(line, str) for line in source):
                text = "".join(source)
            elif isinstance(source, str):
                text = source
            else:
                raise NotebookError(f"cell {len(found) + 1}: `source` is neither text nor a list of lines")
            first = text.lstrip().split("\n", 1)[0]
            magic = first[2:].split(None, 1) if first.startswith("%%") else None
            is_python = magic is None or (bool(magic) and magic[0] in _PYTHON_CELL_MAGICS)
            found.append(_Cell(index, len(found) + 1, text, is_python, as_list))
        return found

    def python(self) -> tuple[str, CellMap]:
        """The code cells as one Python text, and where each cell starts in it."""
        parts: list[str] = []
        starts: list[tuple[int, int]] = []
        line = 1
        for position, cell in enumerate(self.cells):
            if position:
                parts.append(_CELL_MARKER.format(cell.number) + "\n")
                line += 1
            starts.append((line, cell.number))
            if not cell.is_python:
                continue
            body = "".join(_neutralised(cell.text))
            if body and not body.endswith("\n"):
                body += "\n"
            parts.append(body)
            line += body.count("\n")
        return "".join(parts), CellMap(tuple(starts))

    def with_python(self, fixed: str) -> bytes:
        """The notebook's bytes with its code cells replaced from `fixed` (a changed
        `python()` text); raises NotebookError when the text cannot be split back safely."""
        layout = _json_layout(self.raw, self.document)
        if layout is None:
            raise NotebookError("its JSON layout is not one this tool can reproduce; not rewritten")
        pieces = _CELL_MARKER_LINE.split(fixed)
        numbers = [int(n) for n in pieces[1::2]]
        if numbers != [cell.number for cell in self.cells[1:]]:
            raise NotebookError("a fix moved a cell boundary; not rewritten")
        texts = [pieces[0], *pieces[2::2]]
        document = json.loads(self.raw)
        carried = ""  # code a fix put where a non-Python cell stands goes to the next Python cell
        for cell, text in zip(self.cells, texts, strict=True):
            if not cell.is_python:
                carried += text
                continue
            source = _restore_magics(cell.text, carried + text)
            carried = ""
            if not cell.text.endswith("\n") and source.endswith("\n"):
                source = source[:-1]
            if source != cell.text:
                document["cells"][cell.index]["source"] = source.splitlines(keepends=True) if cell.as_list else source
        if carried.strip():
            raise NotebookError("a fix added code after the last Python cell; not rewritten")
        return _serialise(document, layout)

    def cell_lines(self, number: int) -> list[str]:
        """The lines of code cell `number`, for code frames."""
        return next((cell.text.splitlines() for cell in self.cells if cell.number == number), [])


def changed_cells(before: bytes, after: bytes) -> list[tuple[int, str, str]]:
    """(cell number, old source, new source) for each code cell `after` changed."""
    old, new = Notebook(before).cells, Notebook(after).cells
    return [(a.number, a.text, b.text) for a, b in zip(old, new) if a.text != b.text]


def _kernel_language(document: dict) -> str | None:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return None
    for key, field in (("language_info", "name"), ("kernelspec", "language")):
        value = metadata.get(key)
        if isinstance(value, dict) and isinstance(value.get(field), str):
            return value[field].lower()
    return None


def _looks_magic(line: str) -> bool:
    stripped = line.strip()
    code = _code_part(line).strip()  # `x += 1  # why?` is Python: the `?` is in a comment
    return stripped.startswith(("%", "!", "?")) or code.endswith("?") or bool(_MAGIC_ASSIGNMENT.match(line))


def _code_part(line: str) -> str:
    """`line` without its comment (a `#` outside a string)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def _magic_lines(text: str) -> list[bool]:
    """For each line of `text`, whether it is an IPython magic: one that looks like one and
    starts a logical line (`%(a, b)` continuing an open bracket is Python's `%` operator)."""
    flags = []
    open_brackets, quote, continued = 0, "", False
    for line in text.splitlines(keepends=True):
        magic = not open_brackets and not quote and not continued and _looks_magic(line)
        flags.append(magic)
        if not magic:
            open_brackets, quote = _scan(line, open_brackets, quote)
            continued = line.rstrip("\r\n").endswith("\\") and not quote
    return flags


_TRIPLE_QUOTES = ('"""', "'''")


def _scan(line: str, open_brackets: int, quote: str) -> tuple[int, str]:
    """Bracket depth and open string quote after `line`, starting from the given state."""
    i = 0
    while i < len(line):
        if quote:
            if line[i] == "\\":
                i += 2
            elif line.startswith(quote, i):
                i += len(quote)
                quote = ""
            else:
                i += 1
            continue
        char = line[i]
        if char == "#":
            break
        if char in "'\"":
            quote = line[i : i + 3] if line[i : i + 3] in _TRIPLE_QUOTES else char
            i += len(quote)
            continue
        if char in "([{":
            open_brackets += 1
        elif char in ")]}":
            open_brackets = max(0, open_brackets - 1)
        i += 1
    if quote not in _TRIPLE_QUOTES:
        quote = ""  # a one-line string left open is a syntax error the parser reports
    return open_brackets, quote


def _neutralised(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    for i, magic in enumerate(_magic_lines(text)):
        if magic:
            ending = "\n" if lines[i].endswith("\n") else ""
            lines[i] = _INDENT.match(lines[i]).group(0) + _MAGIC_PLACEHOLDER + ending
    return lines


def _restore_magics(original: str, fixed: str) -> str:
    """`fixed` with each placeholder line replaced, in order, by the magic it stands for. A
    cell magic (`%%capture`) must stay the cell's first line: lines a fix put above it move
    just below it."""
    lines = original.splitlines(keepends=True)
    magics = [line for line, magic in zip(lines, _magic_lines(original)) if magic]
    lines = fixed.splitlines(keepends=True)
    placeholders = [i for i, line in enumerate(lines) if line.strip() == _MAGIC_PLACEHOLDER]
    if len(placeholders) != len(magics):
        raise NotebookError("a fix removed an IPython magic line; not rewritten")
    if magics and magics[0].lstrip().startswith("%%") and placeholders[0] > 0:
        first = placeholders[0]
        lines = [lines[first], *lines[:first], *lines[first + 1 :]]
        placeholders = [0, *placeholders[1:]]
    for i, magic in zip(placeholders, magics):
        ending = "\n" if lines[i].endswith("\n") else ""
        lines[i] = magic.rstrip("\n") + ending
    return "".join(lines)


# Jupyter writes indent=1, sorted keys, non-ASCII kept; other tools use other settings
_LAYOUTS = [
    (indent, ensure_ascii, sort_keys)
    for indent in (1, 2, 4, None)
    for ensure_ascii in (False, True)
    for sort_keys in (True, False)
]


def _json_layout(raw: bytes, document: dict) -> tuple | None:
    for indent, ensure_ascii, sort_keys in _LAYOUTS:
        for ending in ("\n", ""):
            layout = (indent, ensure_ascii, sort_keys, ending)
            try:
                if _serialise(document, layout) == raw:
                    return layout
            except NotebookError:
                continue
    return None


def _serialise(document: dict, layout: tuple) -> bytes:
    indent, ensure_ascii, sort_keys, ending = layout
    text = json.dumps(document, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys) + ending
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate (`"\ud83d"`) only ensure_ascii can write
        raise NotebookError(f"its JSON cannot be written as UTF-8 ({error.reason})") from None
