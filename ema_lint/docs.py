"""Rule documentation rendered from each rule's docstring and its tested examples."""

from __future__ import annotations

import inspect

from ema_lint.registry import rule_for, tool_code
from ema_lint.rule import Example, Rule


def _block(example: Example) -> str:
    return "```python\n" + example.source.rstrip("\n") + "\n```\n"


def rule_doc(code: str) -> str:
    """Markdown docs for `code`; raises KeyError for an unknown code."""
    rule = rule_for(code)
    if rule is None:
        tool = tool_code(code.upper())
        return f"# {tool.name} ({tool.code})\n\nSeverity: {tool.severity.value}\n\n{tool.summary}.\n"
    return _rule_doc(rule)


def _rule_doc(rule: type[Rule]) -> str:
    parts = [
        f"# {rule.name} ({rule.code})\n\n",
        f"Severity: {rule.severity.value}\n\n",
        f"{rule.summary}.\n\n",
        inspect.cleandoc(rule.__doc__ or "").rstrip() + "\n",
    ]
    if rule.INVALID:
        parts.append("\n## Flagged (tested examples)\n\n")
        for example in rule.INVALID:
            parts.append(_block(example))
            if example.message:
                parts.append(f"Reports: {example.message}\n")
            if example.fixed:
                parts.append("\nAfter `ema-lint fix --write --unsafe-fixes`:\n\n" + _block(Example(example.fixed)))
            parts.append("\n")
    if rule.VALID:
        parts.append("## Not flagged (tested examples)\n\n")
        for example in rule.VALID:
            parts.append(_block(example) + "\n")
    return "".join(parts)
