"""Fixing many files: which files may be written, the fix loop per file, atomic writes, diffs.

Symbolic links are never written through, neither a linked file nor a linked folder. A link whose target is itself among the files
being fixed is dropped (the target is fixed once, as itself); a link to anything else is
checked but not fixed, because its target lies outside the given paths. A file reached
twice (through a linked folder) is fixed once. Read-only files and files with several hard
links are checked but not written: `os.replace` would change the permissions the user set
or split the links. A file that changed on disk since it was read is not overwritten.
"""

from __future__ import annotations

import collections
import difflib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Sequence

import libcst as cst

from ema_lint.diagnostics import Applicability, Diagnostic
from ema_lint.engine import FileResult, tool_diagnostic
from ema_lint.fixer import FixedSource, fix_source
from ema_lint.fixes import LINE_END
from ema_lint.notebook import Notebook, NotebookError, changed_cells, is_notebook
from ema_lint.project import ProjectIndex
from ema_lint.text import printable
from ema_lint.rule import Rule
from ema_lint import runner
from ema_lint.runner import (
    SourceFile,
    _Loaded,
    died_diagnostic,
    in_cells,
    load_and_index,
    out_of_memory,
    runs_alone,
)
from ema_lint.worker_processes import map_isolated, worker_context

Keep = Callable[[Sequence[Diagnostic]], list[Diagnostic]]


@dataclass
class FileFix:
    """One file's outcome. `error` means the run failed for this file (exit 2); `skipped`
    means its findings were left on purpose, for the reason given (exit 1 if any remain)."""

    path: str
    source: bytes = b""
    fixed: bytes = b""
    applied: collections.Counter = field(default_factory=collections.Counter)
    remaining: list[Diagnostic] = field(default_factory=list)
    found: list[Diagnostic] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    written: bool = False

    @property
    def changed(self) -> bool:
        return self.fixed != self.source


def fix_files(
    files: Sequence[SourceFile],
    rules: Sequence[type[Rule]],
    *,
    unsafe: bool = False,
    write: bool = False,
    keep: Keep | None = None,
    jobs: int = 1,
    roots: Sequence[str] = (),
) -> list[FileFix]:
    """Fix `files`; with `write`, replace each changed file atomically. Never raises for bad
    input. `roots`: the paths the user named; a file whose real location is outside all of
    them (reached through a linked folder) is checked but never written."""
    targets, unwritable = _targets(files, roots)
    # decided once, before any pool: a pool just shut down may still show its threads
    context = worker_context()
    loaded, project = load_and_index(targets, jobs=jobs, context=context)
    keep = keep or list
    outcomes: dict[str, FileFix] = {}
    todo = []
    for item in loaded:
        path = item.file.path
        problem = item.problem or item.syntax_error
        if problem is not None:
            found = in_cells(item, FileResult(path, keep([problem]))).diagnostics
            outcomes[path] = FileFix(path, remaining=found, found=found)
        else:
            todo.append(item)
    for item, result in _fix_all(todo, rules, project, unsafe, keep, jobs, context):
        path = item.file.path
        if path in unwritable:
            # its findings show; the fix is dropped, as the file will not be written
            found = in_cells(item, FileResult(path, result.found)).diagnostics
            on_disk = item.raw if item.raw is not None else item.source
            outcomes[path] = FileFix(path, on_disk, on_disk, remaining=found, found=found, skipped=unwritable[path])
        else:
            outcomes[path] = _outcome(item, result)
    ordered = [outcomes[f.path] for f in targets]
    if write:
        for outcome in ordered:
            if outcome.changed and outcome.error is None:
                outcome.error = write_atomically(outcome.path, outcome.source, outcome.fixed)
                outcome.written = outcome.error is None
                if not outcome.written:
                    outcome.fixed, outcome.applied, outcome.remaining = outcome.source, collections.Counter(), outcome.found
    return ordered


def _outcome(item: _Loaded, result: FixedSource) -> FileFix:
    """The file's outcome in its own terms: a notebook's bytes and cell positions."""
    if item.raw is None:
        return FileFix(
            result.path, result.source, result.fixed, result.applied, result.remaining, result.found, result.problem
        )
    remaining = in_cells(item, FileResult(result.path, result.remaining)).diagnostics
    found = in_cells(item, FileResult(result.path, result.found)).diagnostics
    fixed, applied, problem = item.raw, result.applied, result.problem
    if result.fixed != result.source:
        try:
            fixed = Notebook(item.raw).with_python(result.fixed.decode("utf-8"))
        except (NotebookError, UnicodeDecodeError) as error:
            fixed, applied, remaining, problem = item.raw, collections.Counter(), found, f"notebook not fixed: {error}"
    return FileFix(result.path, item.raw, fixed, applied, remaining, found, problem)


def _targets(files: Sequence[SourceFile], roots: Sequence[str] = ()) -> tuple[list[SourceFile], dict[str, str]]:
    """The files to open, and for those that must not be written, why."""
    real_roots = [os.path.realpath(root) for root in roots]
    regular_reals = {os.path.realpath(f.path) for f in files if not os.path.islink(f.path)}
    targets: list[SourceFile] = []
    unwritable: dict[str, str] = {}
    seen: set[str] = set()
    for file in files:
        if file.content is not None:
            targets.append(file)  # standard input: its fix is printed, and nothing on disk is written
            continue
        real = os.path.realpath(file.path)
        if os.path.islink(file.path):
            if real in regular_reals:
                continue
            targets.append(file)
            unwritable[file.path] = (
                f"symbolic link to {real}, which is not among the given paths; fix the target itself"
            )
            continue
        if real in seen:
            continue
        seen.add(real)
        targets.append(file)
        if real_roots and not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in real_roots):
            unwritable[file.path] = f"reached through a symbolic link to {real}, outside the given paths; not changed"
            continue
        reason = _why_not_writable(file.path)
        if reason is not None:
            unwritable[file.path] = reason
    return targets, unwritable


def _why_not_writable(path: str) -> str | None:
    try:
        info = os.stat(path)
    except OSError:
        return None  # reported when it is read
    # root may write anything, so look at the mode bits the user set, not only access()
    if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
        return "read-only; not changed (make it writable to fix it)"
    if info.st_nlink > 1:
        return f"has {info.st_nlink} hard links; replacing it would split them"
    return None


class _Worker:
    rules: Sequence[type[Rule]] = ()
    project: ProjectIndex = ProjectIndex()
    unsafe = False
    keep: Keep = list

    @classmethod
    def setup(cls, rules, project, unsafe, keep) -> None:
        cls.rules, cls.project, cls.unsafe, cls.keep = rules, project, unsafe, keep

    @classmethod
    def fix(cls, item: _Loaded) -> FixedSource:
        path, source = item.file.path, item.source
        try:
            return fix_source(
                path, source, cls.rules, unsafe=cls.unsafe, project=cls.project, module_name=item.file.module_name,
                keep=cls.keep,
            )
        except MemoryError:
            return _unfixed(item, out_of_memory(path))
        except Exception as error:  # a rule bug (RecursionError included) costs this file, never the run
            return _unfixed(item, tool_diagnostic("EMA005", path, f"internal error: {type(error).__name__}: {error}"))


def _unfixed(item: _Loaded, crash: Diagnostic) -> FixedSource:
    return FixedSource(item.file.path, item.source, item.source, remaining=[crash], found=[crash])


def _fixer_died(item: _Loaded, cause: str) -> FixedSource:
    return _unfixed(item, died_diagnostic(item.file.path, "fixing", cause))


def _fix_all(todo, rules, project, unsafe, keep, jobs, context):
    return map_isolated(
        _Worker.fix,
        todo,
        jobs=jobs,
        context=context,
        died=_fixer_died,
        run_alone=runs_alone,
        limits=runner.FILE_LIMITS,
        setup=_Worker.setup,
        setup_args=(rules, project, unsafe, keep),
        size=lambda item: len(item.source),
    )


def _between_check_and_replace(path: str) -> None:
    """Runs in the race window, between the last check and the rename: tests put a
    concurrent edit here."""


def write_atomically(path: str, expected: bytes, data: bytes) -> str | None:
    """Replace `path`'s bytes `expected` with `data`: a temporary file created exclusively
    next to it (mode, owner and extended attributes, ACLs included, copied over), then
    `os.replace`, only if `path` still names the file that was read and it still holds
    `expected`. Returns why it did not write, or None.

    Compare-and-swap as far as POSIX allows: the check reads the original through a
    descriptor opened before the temporary file exists, immediately before the rename, and
    after the rename the old file is read again; an edit written into it in between is put
    back and the fix reported as not applied. What remains is an editor's own atomic save
    renamed over `path` in the microseconds between the check and our rename.
    """
    temporary = None
    original = None
    try:
        original = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        info = os.fstat(original)
        if _read_all(original) != expected:
            return "changed on disk since it was read; not overwritten"
        temporary = _temporary_beside(path, data, original, info)
        now = os.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino) or _read_all(original) != expected:
            return "changed on disk since it was read; not overwritten"
        checked = os.fstat(original)
        _between_check_and_replace(path)
        os.replace(temporary, path)
        temporary = None
        late = os.fstat(original)
        if (late.st_size, late.st_mtime_ns) != (checked.st_size, checked.st_mtime_ns) or _read_all(original) != expected:
            # an edit landed in the old file between the check and the rename: it wins
            try:
                temporary = _temporary_beside(path, _read_all(original), original, info)
                os.replace(temporary, path)
                temporary = None
            except OSError as error:
                raise _LostEdit(error) from error
            return "changed on disk while being replaced; the edit was kept and the fix not applied"
    except _LostEdit as lost:
        error = lost.__cause__
        return (
            "changed on disk while being replaced, and putting that edit back failed "
            f"({getattr(error, 'strerror', None) or error}): the file now holds the fix, not the edit"
        )
    except OSError as error:
        return f"cannot write: {error.strerror or error}"
    finally:
        if original is not None:
            os.close(original)
        if temporary is not None:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
    return None


class _LostEdit(Exception):
    """A concurrent edit could not be restored after our rename."""


def _temporary_beside(path: str, data: bytes, original: int, info: os.stat_result) -> str:
    """A new file next to `path` (created exclusively) holding `data` and `original`'s metadata."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".ema-lint", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            _copy_metadata(original, info, stream.fileno())
            os.fsync(stream.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _read_all(descriptor: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(descriptor, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _copy_metadata(source: int, info: os.stat_result, target: int) -> None:
    """Mode, owner and extended attributes (where POSIX ACLs live) of `source` onto
    `target`. An attribute that cannot be kept stops the write (OSError): a fix must not
    silently drop what the user set on the file."""
    os.fchmod(target, stat.S_IMODE(info.st_mode))
    made = os.fstat(target)
    if (made.st_uid, made.st_gid) != (info.st_uid, info.st_gid):
        os.fchown(target, info.st_uid, info.st_gid)
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError:
        return  # the file system keeps no extended attributes
    for name in names:
        value = os.getxattr(source, name)
        try:
            if os.getxattr(target, name) == value:
                continue
        except OSError:
            pass
        os.setxattr(target, name, value)


def unified_diff(path: str, before: bytes, after: bytes) -> str:
    """A unified diff of the decoded text, showing a changed line ending or final newline;
    for a notebook, one diff per changed code cell (its JSON is not what a person edits)."""
    if is_notebook(path):
        return "".join(
            _text_diff(f"{path}:cell {number}", old, new) for number, old, new in changed_cells(before, after)
        )
    encoding = cst.parse_module(before).encoding
    return _text_diff(path, before.decode(encoding), after.decode(encoding))


def _text_diff(name: str, before: str, after: str) -> str:
    old, new = _lines(before), _lines(after)
    out = []
    # a file name may hold a newline or an escape sequence: the header stays one inert line
    name = printable(name, newline=True)
    for line in difflib.unified_diff(old, new, name, name, lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            out.append(line + "\n")
            continue
        body = LINE_END.sub("", line)
        out.append(body + "\n")
        if body == line:
            out.append("\\ No newline at end of file\n")
    return "".join(out)


def _lines(text: str) -> list[str]:
    starts = [0, *(m.end() for m in LINE_END.finditer(text))]
    lines = [text[a:b] for a, b in zip(starts, starts[1:])]
    if starts[-1] < len(text):
        lines.append(text[starts[-1]:])
    return lines


def why_not_fixed(outcome: FileFix, diagnostic: Diagnostic, unsafe: bool) -> str:
    """Why a finding is still there after `fix`."""
    if diagnostic.code.startswith("EMA0"):
        return "the file could not be checked"
    if outcome.error is not None:
        return "fixing the file failed"
    if outcome.skipped is not None:
        return "the file was skipped"
    if diagnostic.fix is None:
        return "no automatic fix"
    if diagnostic.fix.applicability is Applicability.UNSAFE and not unsafe:
        return "unsafe fix; rerun with --unsafe-fixes"
    return "a person must choose; see help"
