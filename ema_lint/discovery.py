"""Which files to check: Python files and Jupyter notebooks under the given paths, minus hidden folders,
virtual environments, paths git ignores (`.gitignore` files, `.git/info/exclude`) and the
`exclude` patterns of the configuration governing each folder.

Ignore patterns are matched here rather than with `pathspec`: its regex translation of
`**` backtracks exponentially on patterns such as `a/**/a/**/...`, and a checked tree
chooses its own `.gitignore`.

Files named on the command line are always checked. Directory symlinks are followed once:
a folder whose real path was already walked is not walked again, so loops end.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ema_lint.diagnostics import Diagnostic
from ema_lint.engine import tool_diagnostic
from ema_lint.notebook import SUFFIX as NOTEBOOK_SUFFIX
from ema_lint.runner import SourceFile

SKIPPED_FOLDERS = frozenset(
    {"__pycache__", "__pypackages__", "_build", "buck-out", "dist", "node_modules", "site-packages", "venv"}
)


@dataclass(frozen=True)
class IgnorePattern:
    """One gitignore pattern, matched segment by segment: `**` segments by dynamic
    programming over (pattern segment, path segment), other segments by a regex with atomic
    groups (`fnmatch`'s translation). Time stays polynomial in the pattern and path lengths
    for every pattern; a regex over the whole path backtracks exponentially on `a/**/a/**/...`."""

    base: str
    segments: tuple[re.Pattern | None, ...]  # None: `**`
    negated: bool
    folders_only: bool

    def matches(self, path: str, is_folder: bool) -> bool:
        if self.folders_only and not is_folder:
            return False
        relative = os.path.relpath(path, self.base).replace(os.sep, "/")
        return not relative.startswith("../") and _match_segments(self.segments, relative.split("/"))


def _match_segments(pattern: tuple[re.Pattern | None, ...], parts: list[str]) -> bool:
    # reachable[j]: the pattern read so far can end just before path segment j
    reachable = [True] + [False] * len(parts)
    for segment in pattern:
        if segment is None:
            following, seen = [False] * (len(parts) + 1), False
            for j in range(len(parts) + 1):
                seen = seen or reachable[j]
                following[j] = seen
        else:
            following = [False] * (len(parts) + 1)
            for j in range(len(parts)):
                if reachable[j] and segment.fullmatch(parts[j]):
                    following[j + 1] = True
        reachable = following
        if not any(reachable):
            return False
    return reachable[len(parts)]


def compile_pattern(pattern: str, base: str) -> IgnorePattern | None:
    """One gitignore line as a pattern, or None for blanks, comments and patterns git cannot use."""
    if pattern.endswith("\\ "):
        pattern = pattern[:-2].rstrip() + " "
    else:
        pattern = pattern.rstrip()
    if not pattern or pattern.startswith("#"):
        return None
    negated = pattern.startswith("!")
    pattern = pattern[1:] if negated else pattern
    if pattern.startswith(("\\#", "\\!")):
        pattern = pattern[1:]  # other escapes stay for `_segment_regex`
    folders_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    if not pattern:
        return None
    parts = pattern.split("/")
    if not anchored:
        parts = ["**", *parts]
    if parts[-1] == "**":
        parts.append("*")  # `dir/**`: everything inside, not `dir` itself
    segments: list[re.Pattern | None] = []
    for part in parts:
        if part == "**":
            if segments and segments[-1] is None:
                continue
            segments.append(None)
            continue
        try:
            segments.append(re.compile(_segment_regex(part)))
        except re.error:
            return None  # `[z-a]`: git ignores a pattern it cannot use, and so do we
    return IgnorePattern(base, tuple(segments), negated, folders_only)


def _segment_regex(part: str) -> str:
    """One path segment's glob as a regex; `[!...]` negates a class and a backslash makes
    the next character literal (`\\*`, `\\?`, `\\[`), as in git."""
    translated = []
    i = 0
    while i < len(part):
        if part[i] == "\\" and i + 1 < len(part):
            translated.append(re.escape(part[i + 1]))
            i += 2
        elif part[i] == "[" and (close := part.find("]", i + 1)) > i:
            body = part[i + 1 : close].replace("\\", "\\\\")
            translated.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = close + 1
        else:
            j = i
            while j < len(part) and part[j] != "\\" and not (part[j] == "[" and part.find("]", j + 1) > j):
                j += 1
            # fnmatch's translation of `*` and `?` uses atomic groups: no catastrophic backtracking
            translated.append(fnmatch.translate(part[i:j]).removeprefix("(?s:").removesuffix(")\\Z"))
            i = j
    return "".join(translated)


def expand_braces(pattern: str) -> list[str]:
    """`{a,b}` alternatives spelled out (`**/{tests,docs}/*` -> two patterns), nested too."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for option in match.group(1).split(",") for expanded in expand_braces(head + option + tail)]


def read_gitignore(folder: str, name: str = ".gitignore") -> list[IgnorePattern]:
    """The patterns of the ignore file `name` in `folder`, anchored at `folder`."""
    try:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    return [p for line in lines if (p := compile_pattern(line, folder)) is not None]


def matches_or_inside(path: str, patterns: Sequence[IgnorePattern], base: str) -> bool:
    """`path`, or a folder between `base` and it, matches one of `patterns`: a file inside
    a matched folder is matched, as git ignores it."""
    relative = os.path.relpath(os.path.abspath(path), base)
    if relative.startswith(".."):
        return False
    parts = relative.split(os.sep)
    for depth in range(len(parts), 0, -1):
        candidate = os.path.join(base, *parts[:depth])
        if any(pattern.matches(candidate, depth < len(parts)) for pattern in patterns):
            return True
    return False


def exclude_patterns(root: str, exclude: Sequence[str]) -> tuple[list[IgnorePattern], list[Diagnostic]]:
    """A configuration's `exclude` lines as patterns anchored at its folder, and the lines
    that are not valid globs as EMA002."""
    patterns, problems = [], []
    for line in exclude:
        pattern = compile_pattern(line.removeprefix("./"), root)
        if pattern is not None:
            patterns.append(pattern)
        elif line.strip() and not line.lstrip().startswith("#"):
            problems.append(tool_diagnostic("EMA002", root, f"`exclude` pattern {line!r} is not a valid glob; ignored"))
    return patterns, problems


def is_ignored(path: str, is_folder: bool, patterns: list[IgnorePattern]) -> bool:
    """gitignore semantics: the last matching pattern decides."""
    ignored = False
    for pattern in patterns:
        if pattern.matches(path, is_folder):
            ignored = not pattern.negated
    return ignored


def _ancestor_gitignores(folder: str) -> list[IgnorePattern]:
    """The repository's `.git/info/exclude`, then .gitignore files from the repository root
    (the folder holding .git) down to `folder`'s parent, git's order of precedence."""
    chain, current = [], os.path.abspath(folder)
    while True:
        chain.append(current)
        if os.path.exists(os.path.join(current, ".git")):
            repository = read_gitignore(current, os.path.join(".git", "info", "exclude"))
            return repository + [p for directory in reversed(chain[1:]) for p in read_gitignore(directory)]
        parent = os.path.dirname(current)
        if parent == current:
            return []
        current = parent


def _skipped_folder(path: str, name: str) -> bool:
    """A folder a walk never enters: hidden, a build or cache folder, a virtual environment."""
    return name.startswith(".") or name in SKIPPED_FOLDERS or _is_virtualenv(path)


def _is_virtualenv(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "pyvenv.cfg"))


def discover(
    paths: list[str],
    excluded_in: Callable[[str], Sequence[IgnorePattern]] = lambda folder: (),
    *,
    respect_gitignore: bool = True,
    force_exclude: bool = False,
) -> tuple[list[SourceFile], list[Diagnostic]]:
    """The files to check under `paths`; `excluded_in(folder)`: the `exclude` patterns of
    the configuration that governs `folder`. A file named in `paths` is checked even when
    excluded, unless `force_exclude` (ruff's `--force-exclude`, for pre-commit)."""
    gitignores = read_gitignore if respect_gitignore else lambda folder: []
    ancestor_gitignores = _ancestor_gitignores if respect_gitignore else lambda folder: []
    files: dict[str, SourceFile] = {}
    problems: list[Diagnostic] = []
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
        patterns = patterns + gitignores(folder)
        excluded = excluded_in(folder)
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
                if _skipped_folder(entry.path, entry.name):
                    continue
                walk(entry.path, module_root, patterns)
            elif entry.name.endswith((".py", NOTEBOOK_SUFFIX)):
                add(entry.path, module_root)

    def excluded_by_force(path: str) -> bool:
        """The file, or a folder above it, is one a walk of its tree would skip: ignored,
        excluded, or a hidden, build or virtual-environment folder named in the path."""
        inside = os.path.relpath(os.path.abspath(path))
        if not inside.startswith(".."):
            # folders of the path below the current one (`dist/x.py`, `.venv/lib/y.py`)
            folders = inside.split(os.sep)[:-1]
            for depth, name in enumerate(folders):
                if _skipped_folder(os.path.join(*folders[: depth + 1]), name):
                    return True
        folder = os.path.abspath(os.path.dirname(path) or ".")
        patterns = ancestor_gitignores(folder) + gitignores(folder) + list(excluded_in(folder))
        candidates, current = [(os.path.abspath(path), False)], folder
        while os.path.dirname(current) != current:
            candidates.append((current, True))
            current = os.path.dirname(current)
        return any(is_ignored(candidate, is_folder, patterns) for candidate, is_folder in candidates)

    for path in paths:
        if os.path.isdir(path):
            walk(path, _package_root(path), ancestor_gitignores(path))
        elif os.path.lexists(path):
            if not (force_exclude and excluded_by_force(path)):
                add(path, _package_root(os.path.dirname(path) or "."))
        else:
            problems.append(tool_diagnostic("EMA004", os.path.normpath(path), "cannot read: no such file or folder"))
    return sorted(files.values(), key=lambda f: f.path), problems


def standard_input(filename: str | None, content: bytes) -> SourceFile:
    """The file standard input stands for: `content`, checked as if it were `filename`
    (its settings, its module name, its notebook-ness); `-` in the current folder when unnamed."""
    path = os.path.normpath(filename or "-")
    return SourceFile(path, _package_root(os.path.dirname(path) or "."), content=content)


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
