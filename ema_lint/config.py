"""Settings per file, ruff's way: each file follows the nearest `.ema-lint.toml`,
`ema-lint.toml` or `pyproject.toml` with a [tool.ema-lint] table at or above its folder (so
the order of command-line paths never matters), `extend` inherits from another file, and
`--config FILE` or `--config 'KEY = VALUE'` on the command line takes precedence.

A bad key or value never stops the run: it becomes an EMA002 diagnostic pointing at the
key, the value is ignored, and checking goes on with the rest of the settings.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field, replace

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


# in one folder the first of these that configures ema-lint wins, as with ruff's files
CONFIG_FILES = (".ema-lint.toml", "ema-lint.toml", "pyproject.toml")
COMMAND_LINE = "<--config>"


def _configures(path: str) -> bool:
    """A standalone file always configures; a pyproject.toml when its `tool` table has an
    `ema-lint` key in any shape (a misshapen one is then reported, not silently skipped), or
    when it mentions ema-lint and cannot be read as TOML at all."""
    if not os.path.isfile(path):
        return False
    if os.path.basename(path) != "pyproject.toml":
        return True
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return False
    if SECTION.encode() not in raw:
        # TOML is UTF-8; a UTF-16 file that names the tool is ours to report
        return SECTION.encode("utf-16-le") in raw
    try:
        tool = tomllib.loads(raw.decode("utf-8")).get("tool")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return True
    return isinstance(tool, dict) and SECTION in tool


def find_config(folder: str) -> str | None:
    """The configuration that governs files in `folder`: the nearest `.ema-lint.toml`,
    `ema-lint.toml` or `pyproject.toml` with a [tool.ema-lint] table, at or above it."""
    directory = os.path.abspath(folder)
    while True:
        for name in CONFIG_FILES:
            candidate = os.path.join(directory, name)
            if _configures(candidate):
                return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def parse_override(text: str) -> dict:
    """`--config 'KEY = VALUE'` as a one-key table; raises ValueError with the reason."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{text!r} is neither a configuration file nor a TOML `KEY = VALUE` pair ({error})") from None
    if len(table) != 1:
        raise ValueError(f"{text!r} must set exactly one key")
    return table


def load_settings(path: str | None, overrides: dict | None = None, *, explicit: bool = False) -> Settings:
    """Settings from the configuration file `path` (None: defaults), its `extend` chain and
    the command line's `overrides`. `explicit`: the user named the file with `--config`."""
    overrides = overrides or {}
    if path is None:
        return _settings_from_table(overrides, os.path.abspath("."), COMMAND_LINE, "") if overrides else Settings(
            root=os.path.abspath(".")
        )
    path = os.path.abspath(path)
    root = os.path.dirname(path)
    table, text, problems = _read_table(path, (), explicit=explicit)
    settings = _settings_from_table({**table, **overrides}, root, path, text)
    return replace(settings, problems=(*problems, *settings.problems))


def _read_table(path: str, chain: tuple[str, ...], *, explicit: bool = False) -> tuple[dict, str, list[Diagnostic]]:
    """The settings table of one file merged over the files it extends, the file's text (to
    point at keys) and the problems met; a file that cannot be used contributes nothing."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as error:
        return {}, "", [tool_diagnostic("EMA002", path, f"cannot read config: {error}")]
    except tomllib.TOMLDecodeError as error:
        line = int(m.group(1)) if (m := re.search(r"line (\d+)", str(error))) else 1
        return {}, "", [tool_diagnostic("EMA002", path, f"invalid TOML: {error}", line)]
    except RecursionError:
        return {}, "", [tool_diagnostic("EMA002", path, "invalid TOML: nested too deeply")]
    if os.path.basename(path) == "pyproject.toml":
        tool = document.get("tool", {})
        table = tool.get(SECTION) if isinstance(tool, dict) else None
        if table is None and isinstance(tool, dict):
            if explicit:
                message = "has no [tool.ema-lint] table; default settings used"
                return {}, text, [tool_diagnostic("EMA002", path, message)]
            table = {}
        if not isinstance(table, dict):
            where = "`tool`" if not isinstance(tool, dict) else "[tool.ema-lint]"
            message = f"{where} must be a table; settings ignored"
            return {}, text, [tool_diagnostic("EMA002", path, message, _key_line(text, "tool"))]
    else:
        table = document
    table = dict(table)
    base = table.pop("extend", None)
    if base is None:
        return table, text, []
    if not isinstance(base, str):
        return table, text, [tool_diagnostic("EMA002", path, "`extend` must be a path", _key_line(text, "extend"))]
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
    if base_path in (*chain, path):
        message = f"`extend` of {base!r} makes a cycle; not followed"
        return table, text, [tool_diagnostic("EMA002", path, message, _key_line(text, "extend"))]
    inherited, _, problems = _read_table(base_path, (*chain, path), explicit=True)
    inherited = _rebased(inherited, os.path.dirname(base_path), os.path.dirname(path))
    return {**inherited, **table}, text, problems


def _rebased(table: dict, base_root: str, root: str) -> dict:
    """An extended file's path patterns, which are relative to its own folder, rewritten
    relative to `root`, the folder of the file that extends it."""
    table = dict(table)
    for key in ("exclude", "extend-exclude"):
        if isinstance(table.get(key), list):
            table[key] = [p for p in (_rebase(p, base_root, root) for p in table[key]) if p is not None]
    if isinstance(table.get("per-file-ignores"), dict):
        table["per-file-ignores"] = {
            rebased: codes
            for glob, codes in table["per-file-ignores"].items()
            if (rebased := _rebase(glob, base_root, root)) is not None
        }
    return table


def _rebase(pattern: str, base_root: str, root: str) -> str | None:
    """`pattern` (gitignore syntax, relative to `base_root`) relative to `root`; None when
    it can match nothing under `root`. A pattern without an inner `/` matches anywhere."""
    if not isinstance(pattern, str):
        return pattern
    negation = "!" if pattern.startswith("!") else ""
    body = pattern[len(negation) :].removeprefix("./")
    if "/" not in body.rstrip("/") and not body.startswith("/"):
        return pattern
    below = os.path.relpath(root, base_root)
    if below == ".":
        return pattern
    if below.startswith(".."):
        return None  # anchored in another folder: no file under `root` is there
    segments = body.lstrip("/").split("/")
    for part in below.split(os.sep):
        if not segments:
            return None
        if segments[0] == "**":
            return negation + "/".join(segments)
        if not fnmatch.fnmatchcase(part, segments[0]):
            return None
        segments = segments[1:]
    rest = "/".join(segments)
    return negation + "/" + rest if rest else None


class SettingsResolver:
    """The settings for any file: those of `--config FILE` for all, or else of the
    configuration nearest to the file; the command line's `KEY = VALUE` overrides on top.
    Each folder is resolved once."""

    def __init__(self, config_file: str | None = None, overrides: dict | None = None):
        self._config_file = config_file
        # each `KEY = VALUE` is judged once, against the command line, and dropped if bad
        self.problems: list[Diagnostic] = []
        self._overrides = {}
        for key, value in (overrides or {}).items():
            if key == "extend":
                self.problems.append(tool_diagnostic("EMA002", COMMAND_LINE, "`extend` cannot be given with --config"))
                continue
            judged = _settings_from_table({key: value}, os.path.abspath("."), COMMAND_LINE, "")
            if judged.problems:
                self.problems.extend(judged.problems)
            else:
                self._overrides[key] = value
        self._by_config: dict[str | None, Settings] = {}
        self._config_of_folder: dict[str, str | None] = {}

    def for_folder(self, folder: str) -> Settings:
        folder = os.path.abspath(folder)
        if self._config_file is not None:
            config = self._config_file
        elif folder in self._config_of_folder:
            config = self._config_of_folder[folder]
        else:
            config = self._config_of_folder[folder] = find_config(folder)
        if config not in self._by_config:
            self._by_config[config] = load_settings(config, self._overrides, explicit=config == self._config_file)
        return self._by_config[config]

    def for_path(self, path: str) -> Settings:
        path = os.path.abspath(path)
        return self.for_folder(path if os.path.isdir(path) else os.path.dirname(path))

    @property
    def used(self) -> list[Settings]:
        """Every settings resolved so far, each configuration once."""
        return list(self._by_config.values())


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
