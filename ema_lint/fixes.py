"""Turning `Fix` data back into source text."""

from __future__ import annotations

from typing import Iterable

from ema_lint.diagnostics import Edit, Location


class OverlappingEdits(ValueError):
    pass


def _offset(line_starts: list[int], location: Location) -> int:
    return line_starts[location.line - 1] + location.column - 1


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """Apply non-overlapping edits to `text`; positions refer to `text` before any edit.
    Identical edits count once: fixes of different findings may share one (EMA102's fix
    adds the same `context_fn=` to a checkpoint call as EMA101's)."""
    line_starts = [0]
    for line in text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    spans = sorted(
        ((_offset(line_starts, e.start), _offset(line_starts, e.end), e.content) for e in dict.fromkeys(edits)),
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
