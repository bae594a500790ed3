"""`[tool.ema-lint]` in the nearest pyproject.toml.

A bad key or value never stops the run: it becomes an EMA002 diagnostic pointing at the
key, the value is ignored, and checking goes on with the rest of the settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ema_lint.diagnostics import Diagnostic, Severity
from ema_lint.engine import tool_diagnostic
from ema_lint.registry import is_known_selector

SECTION = "ema-lint"
LIST_KEYS = ("select", "ignore", "extend-select", "exclude", "extend-exclude")
KNOWN_KEYS = (*LIST_KEYS, "per-file-ignores", "fail-on")


@dataclass(frozen=True)
class Settings:
    root: str
    config_path: str | None = None
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fail_on: Severity = Severity.INFO
    problems: tuple[Diagnostic, ...] = field(default=(), compare=False)

    @property
    def selected(self) -> tuple[str, ...]:
        return (*self.select, *self.extend_select)


def find_pyproject(start: str) -> str | None:
    """The nearest pyproject.toml at or above `start` that has a [tool.ema-lint] table,
    else the nearest pyproject.toml at all, else None."""
    directory = os.path.abspath(start if os.path.isdir(start) else os.path.dirname(start) or ".")
    nearest = None
    while True:
        candidate = os.path.join(directory, "pyproject.toml")
        if os.path.isfile(candidate):
            nearest = nearest or candidate
            try:
                with open(candidate, "rb") as handle:
                    if re.search(rb"^\s*\[tool\.(\"ema-lint\"|ema-lint)", handle.read(), re.MULTILINE):
                        return candidate
            except OSError:
                pass
        parent = os.path.dirname(directory)
        if parent == directory:
            return nearest
        directory = parent


def load_settings(start: str = ".", config_path: str | None = None) -> Settings:
    path = config_path or find_pyproject(start)
    if path is None:
        return Settings(root=os.path.abspath(start if os.path.isdir(start) else "."))
    root = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        document = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        return Settings(root, path, problems=(tool_diagnostic("EMA002", path, f"cannot read config: {error}"),))
    except tomllib.TOMLDecodeError as error:
        line = int(m.group(1)) if (m := re.search(r"line (\d+)", str(error))) else 1
        return Settings(root, path, problems=(tool_diagnostic("EMA002", path, f"invalid TOML: {error}", line),))
    except RecursionError:
        return Settings(root, path, problems=(tool_diagnostic("EMA002", path, "invalid TOML: nested too deeply"),))
    tool = document.get("tool", {})
    table = tool.get(SECTION, {}) if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        where = "`tool`" if not isinstance(tool, dict) else "[tool.ema-lint]"
        message = f"{where} must be a table; settings ignored"
        return Settings(root, path, problems=(tool_diagnostic("EMA002", path, message, _key_line(raw.decode("utf-8"), "tool")),))
    return _settings_from_table(table, root, path, raw.decode("utf-8"))


def _key_line(text: str, key: str) -> int:
    """Line of `key = ...` inside [tool.ema-lint], for pointing diagnostics at it."""
    section = re.search(r"^\s*\[tool\.(\"ema-lint\"|ema-lint)[^\n]*$", text, re.MULTILINE)
    offset = section.end() if section else 0
    match = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=", re.MULTILINE).search(text, offset)
    return text.count("\n", 0, match.start()) + 1 if match else (text.count("\n", 0, offset) + 1)


def _settings_from_table(table: dict, root: str, path: str, text: str) -> Settings:
    problems: list[Diagnostic] = []
    values: dict = {}

    def problem(key: str, message: str) -> None:
        problems.append(tool_diagnostic("EMA002", path, message, _key_line(text, key)))

    for key, value in table.items():
        if key not in KNOWN_KEYS:
            problem(key, f"unknown key `{key}` in [tool.ema-lint]; known keys: {', '.join(KNOWN_KEYS)}")
        elif key in LIST_KEYS:
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problem(key, f"`{key}` must be a list of strings")
                continue
            if key in ("select", "ignore", "extend-select"):
                unknown = [v for v in value if not is_known_selector(v)]
                for selector in unknown:
                    problem(key, f"`{key}` names unknown rule selector `{selector}`")
                if key == "select" and value and len(unknown) == len(value):
                    continue  # a selection of typos alone would silently run no rule
                value = [v for v in value if v not in unknown]
            values[key.replace("-", "_")] = tuple(value)
        elif key == "per-file-ignores":
            if not isinstance(value, dict) or not all(
                isinstance(v, list) and all(isinstance(c, str) for c in v) for v in value.values()
            ):
                problem(key, "`per-file-ignores` must map glob patterns to lists of codes")
                continue
            values["per_file_ignores"] = tuple((glob, tuple(codes)) for glob, codes in value.items())
        elif key == "fail-on":
            try:
                values["fail_on"] = Severity(value)
            except ValueError:
                problem(key, f"`fail-on` must be one of error, warning, info, not {value!r}")
    exclude = values.pop("exclude", ()) + values.pop("extend_exclude", ())
    return Settings(root, path, exclude=exclude, problems=tuple(problems), **values)
