"""What `check` and `fix` share: the settings of each file, the rules to run, the files,
and the filters applied to findings (selection and per-file ignores of the file's own
configuration, ignored tool codes, `fail-on`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Sequence

from ema_lint.config import Settings, SettingsResolver
from ema_lint.diagnostics import Diagnostic
from ema_lint.discovery import (
    IgnorePattern,
    compile_pattern,
    discover,
    exclude_patterns,
    expand_braces,
    matches_or_inside,
)
from ema_lint.engine import severity_at_least
from ema_lint.registry import TOOL_CODES, enabled_rules, is_enabled
from ema_lint.result_cache import ResultCache, default_cache_dir
from ema_lint.rule import Rule
from ema_lint.runner import SourceFile


@dataclass(frozen=True)
class Selection:
    """The command line's rule selection, applied over each file's configured one."""

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()

    def over(self, settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(select, ignore) for files governed by `settings`."""
        chosen = (*(self.select or settings.select), *settings.extend_select, *self.extend_select)
        return chosen, (*settings.ignore, *self.ignore)


@dataclass(frozen=True)
class DiscoveryOptions:
    """The command line's say in which files are checked (ruff's flags of the same names)."""

    # gitignore-style patterns relative to the current folder, on top of each configuration's
    extend_exclude: tuple[str, ...] = ()
    respect_gitignore: bool = True
    # apply exclusions to files named on the command line too (pre-commit passes every file)
    force_exclude: bool = False


@dataclass
class Workspace:
    resolver: SettingsResolver
    selection: Selection
    rules: tuple[type[Rule], ...]
    files: list[SourceFile]
    problems: list[Diagnostic]
    # things worth saying that are not findings (ruff's `warning:` lines)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        paths: Sequence[str],
        *,
        select: Sequence[str] = (),
        ignore: Sequence[str] = (),
        extend_select: Sequence[str] = (),
        config_path: str | None = None,
        overrides: dict | None = None,
        stdin: SourceFile | None = None,
        discovery: "DiscoveryOptions | None" = None,
    ) -> "Workspace":
        """The workspace of `paths` (default: the current folder), or of the one file `stdin`
        (`standard_input`), which no `exclude` or gitignore pattern leaves out, as in ruff."""
        discovery = discovery or DiscoveryOptions()
        paths = [stdin.path] if stdin is not None else list(paths) or ["."]
        resolver = SettingsResolver(config_path, overrides)
        selection = Selection(tuple(select), tuple(ignore), tuple(extend_select))
        excludes: dict[str | None, list[IgnorePattern]] = {}
        command_line_excludes, exclude_problems = exclude_patterns(os.getcwd(), discovery.extend_exclude)

        def excluded_in(folder: str) -> list[IgnorePattern]:
            settings = resolver.for_folder(folder)
            if settings.config_path not in excludes:
                patterns, problems = exclude_patterns(settings.root, settings.exclude)
                excludes[settings.config_path] = patterns + command_line_excludes
                exclude_problems.extend(problems)
            return excludes[settings.config_path]

        files, problems = (
            ([stdin], [])
            if stdin is not None
            else discover(
                paths,
                excluded_in,
                respect_gitignore=discovery.respect_gitignore,
                force_exclude=discovery.force_exclude,
            )
        )
        for file in files:
            resolver.for_path(file.path)
        used = resolver.used
        # every rule any file's configuration enables runs; `keep` drops what a file's own does not
        rules = tuple(dict.fromkeys(rule for settings in used for rule in enabled_rules(*selection.over(settings))))
        workspace = cls(
            resolver=resolver,
            selection=selection,
            rules=rules,
            files=files,
            problems=[
                *resolver.problems,
                *(d for settings in used for d in settings.problems),
                *exclude_problems,
                *problems,
            ],
        )
        workspace.warnings = workspace._unmatched_per_file_ignores(paths)
        return workspace

    def settings_for(self, path: str) -> Settings:
        return self.resolver.for_path(path)

    def cache(self, directory: str | None = None) -> ResultCache:
        """The result cache for this rule set, keyed on the folder paths are relative to, in
        `directory` (default: the user's cache folder, never one the checked tree provides)."""
        key = ",".join(rule.code for rule in self.rules)
        return ResultCache(directory or default_cache_dir(), key, os.getcwd())

    def keep(self, diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
        """Drop findings of codes that the file's configuration (with the command line) does
        not select (tool codes are on unless ignored), or ignores for that file."""
        tool = {t.code for t in TOOL_CODES}
        kept = []
        for d in diagnostics:
            settings = self.settings_for(d.path)
            select, ignore = self.selection.over(settings)
            if not is_enabled(d.code, ["ALL"] if d.code in tool else select, ignore):
                continue
            if self._ignored_for_file(d, settings):
                continue
            kept.append(d)
        return kept

    def fails(self, diagnostic: Diagnostic) -> bool:
        """The finding fails the run under its file's `fail-on`."""
        return severity_at_least(diagnostic, self.settings_for(diagnostic.path).fail_on)

    def _ignored_for_file(self, diagnostic: Diagnostic, settings: Settings) -> bool:
        return any(
            is_enabled(diagnostic.code, codes, ())
            and matches_or_inside(diagnostic.path, patterns, settings.root) != negated
            for patterns, codes, negated in _per_file_ignores(settings)
        )

    def _unmatched_per_file_ignores(self, paths: Sequence[str]) -> list[str]:
        """Per-file-ignores patterns that match no checked file, for configurations whose
        whole folder was checked (a pre-commit run over a few files proves nothing)."""
        walked = [os.path.abspath(p) for p in paths if os.path.isdir(p)]
        warnings = []
        by_settings: dict[int, list[str]] = {}
        for file in self.files:
            by_settings.setdefault(id(self.settings_for(file.path)), []).append(file.path)
        for settings in self.resolver.used:
            if settings.config_path is None or not any(
                settings.root == folder or settings.root.startswith(folder.rstrip(os.sep) + os.sep) for folder in walked
            ):
                continue
            governed = by_settings.get(id(settings), [])
            for (patterns, _, _), (text, _) in zip(_per_file_ignores(settings), settings.per_file_ignores):
                if not any(matches_or_inside(path, patterns, settings.root) for path in governed):
                    warnings.append(f"{os.path.relpath(settings.config_path)}: per-file-ignores pattern {text!r} matches no file")
        return warnings


def _per_file_ignores(settings: Settings) -> list[tuple[list[IgnorePattern], tuple[str, ...], bool]]:
    return _compiled_per_file_ignores(settings.root, settings.per_file_ignores)


@functools.lru_cache(maxsize=64)
def _compiled_per_file_ignores(root: str, table: tuple) -> list[tuple[list[IgnorePattern], tuple[str, ...], bool]]:
    """Each `per-file-ignores` glob (`**`, `{a,b}`, gitignore anchoring, a leading `./`) as
    patterns, and whether it is negated (`!tests/**`: the codes apply outside tests, as in ruff)."""
    compiled = []
    for glob, codes in table:
        negated = glob.startswith("!")
        glob = glob.removeprefix("!").removeprefix("./")
        patterns = [p for option in expand_braces(glob) if (p := compile_pattern(option, root)) is not None]
        compiled.append((patterns, codes, negated))
    return compiled
