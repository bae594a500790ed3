"""Text that is safe to print: what a checked tree controls (file names, string literals
quoted in messages) must not drive the terminal or forge an output line."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str, *, newline: bool = False) -> str:
    """`text` with control characters (an escape sequence in a file name or a string
    literal quoted in a message), and with `newline` line feeds too, shown as `\\x1b`, so
    they cannot drive the terminal or forge a line."""
    return (_CONTROL_OR_NEWLINE if newline else _CONTROL).sub(lambda m: f"\\x{ord(m.group()):02x}", text)
