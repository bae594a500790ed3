"""A hazard keeps one code, name and severity wherever it is found: source or graph."""

from ema_lint.passes.findings import GRAPH_CODES
from ema_lint.registry import TOOL_CODES, rule_for


def test_graph_codes_agree_with_source_rules_and_tool_codes() -> None:
    tools = {tool.code: tool for tool in TOOL_CODES}
    for code, (name, severity) in GRAPH_CODES.items():
        known = rule_for(code) or tools.get(code)
        if known is not None:
            assert (known.name, known.severity) == (name, severity), code
