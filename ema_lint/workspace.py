"""What `check` and `fix` share: settings, the enabled rules, the files, and the filters
applied to findings (per-file ignores, ignored tool codes)."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Sequence

from ema_lint.config import Settings, load_settings
from ema_lint.diagnostics import Diagnostic
from ema_lint.discovery import discover
from ema_lint.registry import TOOL_CODES, enabled_rules, is_enabled
from ema_lint.rule import Rule
from ema_lint.result_cache import ResultCache, default_cache_dir
from ema_lint.runner import SourceFile


@dataclass
class Workspace:
    settings: Settings
    select: tuple[str, ...]
    ignore: tuple[str, ...]
    rules: tuple[type[Rule], ...]
    files: list[SourceFile]
    problems: list[Diagnostic]

    @classmethod
    def open(
        cls,
        paths: Sequence[str],
        *,
        select: Sequence[str] = (),
        ignore: Sequence[str] = (),
        extend_select: Sequence[str] = (),
        config_path: str | None = None,
    ) -> "Workspace":
        paths = list(paths) or ["."]
        settings = load_settings(paths[0], config_path)
        chosen_select = tuple(select) or settings.select
        chosen = (*chosen_select, *settings.extend_select, *extend_select)
        ignored = (*settings.ignore, *ignore)
        files, problems = discover(paths, settings.root, settings.exclude)
        return cls(
            settings=settings,
            select=chosen,
            ignore=ignored,
            rules=enabled_rules(chosen, ignored),
            files=files,
            problems=[*settings.problems, *problems],
        )

    def cache(self, directory: str | None = None) -> ResultCache:
        """The result cache for this rule set and project root, in `directory` (default: the
        user's cache folder, never one the checked tree provides)."""
        key = ",".join(rule.code for rule in self.rules)
        return ResultCache(directory or default_cache_dir(), key, self.settings.root)

    def keep(self, diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
        """Drop findings of codes that are ignored (tool codes are on unless ignored) or
        ignored for that file by `per-file-ignores`."""
        tool = {t.code for t in TOOL_CODES}
        kept = []
        for d in diagnostics:
            if d.code in tool and not is_enabled(d.code, ["ALL"], self.ignore):
                continue
            if self._ignored_for_file(d):
                continue
            kept.append(d)
        return kept

    def _ignored_for_file(self, diagnostic: Diagnostic) -> bool:
        relative = os.path.relpath(os.path.abspath(diagnostic.path), self.settings.root).replace(os.sep, "/")
        for pattern, codes in self.settings.per_file_ignores:
            if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(os.path.basename(relative), pattern):
                if is_enabled(diagnostic.code, codes, ()):
                    return True
        return False
