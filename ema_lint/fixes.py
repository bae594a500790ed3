"""Turning `Fix` data back into source text."""

from __future__ import annotations

import re
from typing import Iterable

from ema_lint.diagnostics import Edit, Location


# Python's tokenizer, and so libcst's positions, end lines only here; `str.splitlines` also
# breaks at form feeds, U+2028 and other separators, which would shift every later line.
LINE_END = re.compile(r"\r\n|\r|\n")


class OverlappingEdits(ValueError):
    pass


def line_starts(text: str) -> list[int]:
    """Offset of the first character of every line, as libcst numbers lines (1-based index - 1)."""
    return [0, *(match.end() for match in LINE_END.finditer(text))]


def _offset(starts: list[int], location: Location) -> int:
    return starts[location.line - 1] + location.column - 1


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """Apply non-overlapping edits to `text`; positions refer to `text` before any edit.
    Identical edits count once: fixes of different findings may share one (EMA102's fix
    adds the same `context_fn=` to a checkpoint call as EMA101's)."""
    starts = line_starts(text)
    spans = sorted(
        ((_offset(starts, e.start), _offset(starts, e.end), e.content) for e in dict.fromkeys(edits)),
        key=lambda span: (span[0], span[1]),
    )
    for (_, previous_end, _), (start, _, _) in zip(spans, spans[1:]):
        if start < previous_end:
            raise OverlappingEdits(f"edits overlap at offset {start}")
    pieces, cursor = [], 0
    for start, end, content in spans:
        pieces.append(text[cursor:start])
        pieces.append(content)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)
