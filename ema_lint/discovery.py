"""Which files to check: Python files under the given paths, minus hidden folders,
virtual environments, `.gitignore`d paths and `[tool.ema-lint] exclude` patterns.

Files named on the command line are always checked. Directory symlinks are followed once:
a folder whose real path was already walked is not walked again, so loops end.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from ema_lint.diagnostics import Diagnostic
from ema_lint.engine import tool_diagnostic
from ema_lint.runner import SourceFile

SKIPPED_FOLDERS = frozenset(
    {"__pycache__", "__pypackages__", "_build", "buck-out", "dist", "node_modules", "site-packages", "venv"}
)


@dataclass(frozen=True)
class IgnorePattern:
    base: str
    regex: re.Pattern
    negated: bool
    folders_only: bool

    def matches(self, path: str, is_folder: bool) -> bool:
        if self.folders_only and not is_folder:
            return False
        relative = os.path.relpath(path, self.base).replace(os.sep, "/")
        return not relative.startswith("../") and bool(self.regex.match(relative))


def compile_pattern(pattern: str, base: str) -> IgnorePattern | None:
    """One gitignore line as a pattern, or None for blanks and comments."""
    if pattern.endswith("\\ "):
        pattern = pattern[:-2].rstrip() + " "
    else:
        pattern = pattern.rstrip()
    if not pattern or pattern.startswith("#"):
        return None
    negated = pattern.startswith("!")
    pattern = pattern[1:] if negated else pattern
    if pattern.startswith("\\"):
        pattern = pattern[1:]
    # `**/**/` matches what `**/` does; collapsed, no pattern backtracks exponentially
    pattern = re.sub(r"(?:\*\*/)+", "**/", pattern)
    folders_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    regex = "" if anchored else "(?:.*/)?"
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            regex += "/.*"
            i += 3
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 1)) > i:
            body = pattern[i + 1 : close].replace("\\", "\\\\")
            regex += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = close + 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    try:
        compiled = re.compile(regex + "$")
    except re.error:
        return None  # `[z-a]`: git ignores a pattern it cannot use, and so do we
    return IgnorePattern(base, compiled, negated, folders_only)


def read_gitignore(folder: str) -> list[IgnorePattern]:
    try:
        with open(os.path.join(folder, ".gitignore"), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    return [p for line in lines if (p := compile_pattern(line, folder)) is not None]


def is_ignored(path: str, is_folder: bool, patterns: list[IgnorePattern]) -> bool:
    """gitignore semantics: the last matching pattern decides."""
    ignored = False
    for pattern in patterns:
        if pattern.matches(path, is_folder):
            ignored = not pattern.negated
    return ignored


def _ancestor_gitignores(folder: str) -> list[IgnorePattern]:
    """.gitignore files from the repository root (the folder holding .git) down to `folder`."""
    chain, current = [], os.path.abspath(folder)
    while True:
        chain.append(current)
        if os.path.exists(os.path.join(current, ".git")):
            break
        parent = os.path.dirname(current)
        if parent == current:
            chain = [os.path.abspath(folder)]
            break
        current = parent
    return [p for directory in reversed(chain[1:]) for p in read_gitignore(directory)]


def _is_virtualenv(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "pyvenv.cfg"))


def discover(paths: list[str], root: str, exclude: tuple[str, ...] = ()) -> tuple[list[SourceFile], list[Diagnostic]]:
    files: dict[str, SourceFile] = {}
    problems: list[Diagnostic] = []
    excluded = []
    for line in exclude:
        pattern = compile_pattern(line, root)
        if pattern is not None:
            excluded.append(pattern)
        elif line.strip() and not line.lstrip().startswith("#"):
            problems.append(tool_diagnostic("EMA002", root, f"`exclude` pattern {line!r} is not a valid glob; ignored"))
    walked: set[str] = set()

    def add(path: str, module_root: str) -> None:
        path = os.path.normpath(path)
        try:
            os.stat(path)
        except OSError as error:
            reason = {
                errno.ELOOP: "symbolic link loop",
                errno.ENOENT: "broken symbolic link" if os.path.islink(path) else "no such file",
            }.get(error.errno, error.strerror)
            problems.append(tool_diagnostic("EMA004", path, f"cannot read: {reason}"))
            return
        files.setdefault(path, SourceFile(path, module_root))

    def walk(folder: str, module_root: str, patterns: list[IgnorePattern]) -> None:
        real = os.path.realpath(folder)
        if real in walked:
            return
        walked.add(real)
        patterns = patterns + read_gitignore(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            problems.append(tool_diagnostic("EMA004", folder, f"cannot list folder: {error.strerror}"))
            return
        for entry in entries:
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_ignored(entry.path, is_folder, patterns) or is_ignored(entry.path, is_folder, excluded):
                continue
            if is_folder:
                if (
                    entry.name.startswith(".")
                    or entry.name in SKIPPED_FOLDERS
                    or _is_virtualenv(entry.path)
                ):
                    continue
                walk(entry.path, module_root, patterns)
            elif entry.name.endswith(".py"):
                add(entry.path, module_root)

    for path in paths:
        if os.path.isdir(path):
            walk(path, _package_root(path), _ancestor_gitignores(path))
        elif os.path.lexists(path):
            add(path, _package_root(os.path.dirname(path) or "."))
        else:
            problems.append(tool_diagnostic("EMA004", os.path.normpath(path), "cannot read: no such file or folder"))
    return sorted(files.values(), key=lambda f: f.path), problems


def _package_root(folder: str) -> str:
    """The folder above the outermost package containing `folder`, so module names are
    the ones Python would import (`timm/layers/x.py` -> `timm.layers.x`)."""
    folder = os.path.abspath(folder)
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder
