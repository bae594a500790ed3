"""Names as written in libcst trees."""

from __future__ import annotations

import libcst as cst


def dotted_text(node: cst.BaseExpression) -> str | None:
    """`a.b.c` for a chain of attributes on a name, else None (`f().x`, `d[k].y`)."""
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None
