"""Checking many files: project index first, then every file's rules, across processes.

Phase 1 reads each file and extracts its project facts (stdlib `ast`, fast); syntax
errors surface there for every file, including those no rule needs to parse. Phase 2
runs the libcst rules on the files the pre-filter keeps. Both phases are cached by
content hash, and a worker that crashes costs one file a diagnostic, never the run.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import stat
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Callable, Iterable, Sequence

from ema_lint.analysis.syntax import may_crash_libcst, parse_any
from ema_lint.diagnostics import Diagnostic
from ema_lint.engine import FileResult, check_source, tool_diagnostic, triage, undecodable
from ema_lint.notebook import CellMap, Notebook, NotebookError, NotPython, is_notebook
from ema_lint.project import (
    ModuleFacts,
    ProjectIndex,
    imported_top_names,
    module_name_for,
    renamed_module,
    separate_roots,
    sibling_imports,
    summarize,
)
from ema_lint.result_cache import ResultCache
from ema_lint.rule import Rule
from ema_lint.worker_processes import AloneLimits, LimitReached, map_isolated, worker_context

# Past this size a file is generated data, not code a person wrote; parsing it would take
# minutes. Reported as EMA004 rather than silently skipped.
MAX_FILE_BYTES = 10 * 1024 * 1024
# over this, a file is parsed, checked and fixed in a child process held to `FILE_LIMITS`
LARGE_FILE_BYTES = 512 * 1024
FILE_LIMITS = AloneLimits()


@dataclass(frozen=True)
class SourceFile:
    path: str
    root: str
    # top-level names this file's import root shares with another root (`separate_roots`)
    renames: tuple[tuple[str, str], ...] = ()
    # what its imports' top-level names mean: those renames, and sibling modules (`sibling_imports`)
    import_renames: tuple[tuple[str, str], ...] = ()
    # the bytes to check instead of what `path` holds: standard input, named `path`
    content: bytes | None = None

    @property
    def module_name(self) -> str:
        return renamed_module(module_name_for(self.path, self.root), self.renames)

    @property
    def is_notebook(self) -> bool:
        return is_notebook(self.path)


@dataclass
class Report:
    results: list[FileResult] = field(default_factory=list)

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return sorted((d for r in self.results for d in r.diagnostics), key=Diagnostic.sort_key)


@dataclass
class _Loaded:
    """Phase-1 output for one file: its bytes and facts, or the diagnostic that ends its check."""

    file: SourceFile
    digest: str = ""
    # the Python text checked: the file's bytes, or a notebook's code cells
    source: bytes | None = None
    # a notebook's own bytes and where its cells lie in `source`
    raw: bytes | None = None
    cells: CellMap | None = None
    facts: ModuleFacts | None = None
    # set when the reference parser rejects the file; libcst may still accept newer syntax
    syntax_error: Diagnostic | None = None
    problem: Diagnostic | None = None
    # whether a statement nests deep enough to crash libcst (see `may_crash_libcst`); None: not
    # yet measured (facts from the cache, or a file only libcst may read)
    deep: bool | None = None

    @property
    def summarized(self) -> bool:
        return self.facts is not None or self.syntax_error is not None


def _load(file: SourceFile) -> _Loaded:
    loaded = _Loaded(file)
    loaded.source = file.content if file.content is not None else _read(loaded)
    if loaded.source is None:
        return loaded
    if len(loaded.source) > MAX_FILE_BYTES:
        # the limit holds for the bytes actually read: a size can lie (`/proc`, races)
        loaded.source = None
        loaded.problem = tool_diagnostic(
            "EMA004", file.path, f"file is over the {MAX_FILE_BYTES // 2**20} MiB limit; not checked"
        )
        return loaded
    loaded.digest = hashlib.blake2b(loaded.source, digest_size=16).hexdigest()
    if file.is_notebook:
        try:
            python, cells = Notebook(loaded.source).python()
            python_bytes = python.encode("utf-8")
        except NotPython:
            loaded.raw, loaded.source = loaded.source, b""  # nothing of it is Python to check
            return loaded
        except NotebookError as error:
            loaded.problem = tool_diagnostic("EMA004", file.path, f"cannot read notebook: {error}")
            return loaded
        except UnicodeEncodeError as error:
            loaded.problem = tool_diagnostic("EMA004", file.path, f"cannot read notebook: {error.reason} in its code")
            return loaded
        loaded.raw, loaded.source, loaded.cells = loaded.source, python_bytes, cells
        return loaded
    loaded.problem = undecodable(file.path, loaded.source)
    return loaded


def _read(loaded: _Loaded) -> bytes | None:
    """The file's bytes (at most one over the size limit), or None with `loaded.problem` set."""
    path = loaded.file.path
    try:
        # non-blocking: opening a FIFO named `*.py` must not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                loaded.problem = tool_diagnostic("EMA004", path, "not a regular file (a FIFO, device or socket); not checked")
                return None
            size = os.fstat(descriptor).st_size
            if size > MAX_FILE_BYTES:
                loaded.problem = tool_diagnostic(
                    "EMA004",
                    path,
                    f"file is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit; not checked",
                )
                return None
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        loaded.problem = tool_diagnostic("EMA004", path, f"cannot read: {error.strerror or error}")
        return None


def in_cells(loaded: _Loaded, result: FileResult) -> FileResult:
    """`result` with positions counted within notebook cells, for a notebook."""
    if loaded.cells is None:
        return result
    mapped = [loaded.cells.map_diagnostic(d) for d in result.diagnostics]
    return FileResult(result.path, mapped, parsed=result.parsed, skipped=result.skipped)


def _tell_imports(loaded: list[_Loaded]) -> None:
    """Each file told what its imports mean: the renames its import root needs (see
    `separate_roots`) and the modules beside it that its imports name (`sibling_imports`)."""
    names = [(module_name_for(item.file.path, item.file.root), item.file.root) for item in loaded]
    renames = separate_roots(names)
    imported = [imported_top_names(item.source) if item.source is not None else frozenset() for item in loaded]
    siblings = sibling_imports(names, renames, imported)
    for item, (_, root), beside in zip(loaded, names, siblings):
        own = renames.get(root, ())
        if own or beside:
            item.file = SourceFile(item.file.path, root, own, own + beside)


def _summarize(loaded: _Loaded) -> _Loaded:
    if loaded.source is None:
        return loaded
    try:
        tree = parse_any(loaded.source)
        loaded.deep = may_crash_libcst(loaded.source, tree)
        loaded.facts = summarize(
            loaded.file.module_name,
            loaded.source,
            is_package=_is_package(loaded),
            structure=False,
            renames=loaded.file.import_renames,
            tree=tree,
        )
    except SyntaxError as error:
        loaded.syntax_error = tool_diagnostic(
            "EMA001", loaded.file.path, f"cannot parse: {error.msg}", error.lineno or 1, error.offset or 1
        )
    except RecursionError:
        # a 5,000-term `a + a + ...` exhausts the parser's stack: the file costs itself only
        loaded.problem = tool_diagnostic("EMA004", loaded.file.path, "nested too deeply to parse; not checked")
    except MemoryError:
        loaded.problem = out_of_memory(loaded.file.path)
    except Exception as error:  # a bug in reading one file's facts costs that file, not the run
        loaded.problem = tool_diagnostic(
            "EMA005", loaded.file.path, f"internal error while indexing: {type(error).__name__}: {error}"
        )
    return loaded


def _is_package(loaded: _Loaded) -> bool:
    return os.path.basename(loaded.file.path) == "__init__.py"


def _prefer_reference_parser(item: _Loaded, result: FileResult) -> FileResult:
    """Report the reference parser's syntax error (clearer message, exact position) unless
    libcst parsed the file, which it does for syntax newer than the running Python."""
    if item.syntax_error is None or result.parsed:
        return result
    others = [d for d in result.diagnostics if d.code != "EMA001"]
    return dataclasses.replace(result, diagnostics=[item.syntax_error, *others], parsed=False)


class _Worker:
    """State a worker process needs for phase 2, sent once through the pool initializer."""

    rules: Sequence[type[Rule]] = ()
    project: ProjectIndex = ProjectIndex()

    @classmethod
    def setup(cls, rules: Sequence[type[Rule]], project: ProjectIndex) -> None:
        cls.rules, cls.project = rules, project

    @classmethod
    def check(cls, item: _Loaded) -> tuple[FileResult, list[str]]:
        """The file's result, and the modules whose on-demand facts it read."""
        path = item.file.path
        cls.project.start_recording()
        try:
            result = check_source(path, item.source, cls.rules, cls.project, item.file.module_name)
        except MemoryError:
            result = FileResult(path, [out_of_memory(path)], limited=True)
        except Exception as error:  # a rule bug must cost one file, not the run
            result = FileResult(path)
            result.diagnostics.append(
                tool_diagnostic("EMA005", path, f"internal error: {type(error).__name__}: {error}")
            )
        return result, cls.project.consulted_modules()


def _crashed(item: _Loaded, cause: str) -> tuple[FileResult, list[str]]:
    result = FileResult(item.file.path, limited=isinstance(cause, LimitReached))
    result.diagnostics.append(died_diagnostic(item.file.path, "checker", cause))
    return result, []


def died_diagnostic(path: str, process: str, cause: str) -> Diagnostic:
    """EMA004 for a file stopped at a per-file limit (too large to check), else EMA005."""
    if isinstance(cause, LimitReached):
        return tool_diagnostic("EMA004", path, f"not checked: {cause}")
    return tool_diagnostic("EMA005", path, f"internal error: the {process} process died ({cause})")


def out_of_memory(path: str) -> Diagnostic:
    return tool_diagnostic(
        "EMA004",
        path,
        f"not checked: out of memory (a file over {LARGE_FILE_BYTES // 1024} KiB is held to "
        f"{FILE_LIMITS.memory_bytes / 2**30:.3g} GiB)",
    )


def _size(item: _Loaded) -> int:
    return len(item.source or b"")


def may_crash_libcst_on(item: _Loaded) -> bool:
    return item.deep if item.deep is not None else may_crash_libcst(item.source)


def runs_alone(item: _Loaded) -> bool:
    """Whether `item` is checked or fixed in a child of its own, held to `AloneLimits`: it
    may crash the parser, or it is large enough to take minutes and gigabytes."""
    return _size(item) > LARGE_FILE_BYTES or may_crash_libcst_on(item)


def _summary_died(item: _Loaded, cause: str) -> _Loaded:
    item.problem = died_diagnostic(item.file.path, "indexing", cause)
    return item


def load_and_index(
    files: Sequence[SourceFile], *, jobs: int = 1, cache: ResultCache | None = None, context: BaseContext
) -> tuple[list[_Loaded], ProjectIndex]:
    """Phase 1: every file's bytes and facts (or the problem that ends its check), and the
    project index built from them. `context` starts the worker processes (`worker_context`)."""
    loaded = [_load(f) for f in files]
    _tell_imports(loaded)
    if cache is not None:
        cache.fill_facts(loaded)
    needed = [i for i, item in enumerate(loaded) if item.problem is None and not item.summarized]
    summarized = map_isolated(
        _summarize,
        [loaded[i] for i in needed],
        jobs=jobs,
        context=context,
        died=_summary_died,
        # the reference parser cannot crash, and `parse_any` keeps libcst from a file it
        # might; a large file's trees can still take gigabytes
        run_alone=lambda item: _size(item) > LARGE_FILE_BYTES,
        limits=FILE_LIMITS,
        size=_size,
    )
    position = {id(loaded[i]): i for i in needed}
    for item, result in summarized:
        loaded[position[id(item)]] = result
    if cache is not None:
        cache.store_facts(loaded)
    indexed = [item for item in loaded if item.facts is not None]
    # two scripts named alike in folders that are no package (`a/train.py`, `b/train.py`)
    # share a module name; neither may answer for the other, so neither is indexed and
    # each file is judged on its own facts
    names = collections.Counter(item.facts.module_name for item in indexed)
    indexed = [item for item in indexed if names[item.facts.module_name] == 1]
    sources = {item.facts.module_name: (item.source, _is_package(item)) for item in indexed}
    return loaded, ProjectIndex.from_facts([item.facts for item in indexed], sources)


def check_files(
    files: Sequence[SourceFile],
    rules: Sequence[type[Rule]],
    *,
    jobs: int = 1,
    cache: ResultCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    # decided once, before any pool: a pool just shut down may still show its threads
    context = worker_context()
    loaded, project = load_and_index(files, jobs=jobs, cache=cache, context=context)
    results: dict[str, FileResult] = {}
    todo: list[_Loaded] = []
    unparsed: list[tuple[_Loaded, tuple[FileResult, list[str]]]] = []
    for item in loaded:
        if item.problem is not None:
            results[item.file.path] = FileResult(item.file.path, [item.problem])
        elif cache is not None and (hit := cache.result(item, project)) is not None:
            results[item.file.path] = hit
        elif (final := _unparsed_result(item, rules, project)) is not None:
            unparsed.append((item, final))
            if progress:
                progress(1)
        else:
            todo.append(item)
    checked = itertools.chain(unparsed, _run_phase_two(todo, rules, project, jobs, progress, context))
    for item, (result, consulted) in checked:
        result = _prefer_reference_parser(item, result)
        results[item.file.path] = result
        if cache is not None:
            cache.store_result(item, project, result, consulted)
    if cache is not None:
        cache.save()
    by_path = {item.file.path: item for item in loaded}
    return Report([in_cells(by_path[f.path], results[f.path]) for f in files])


def _unparsed_result(item: _Loaded, rules, project: ProjectIndex) -> tuple[FileResult, list[str]] | None:
    """The result of a file no rule can report on (with the on-demand facts that showed
    it), decided here: most files, which then cost no trip to a worker. None: the file
    goes to a worker (a pre-filter that raises is a rule bug, reported there as EMA005)."""
    project.start_recording()
    try:
        result, triggered = triage(item.file.path, item.source, rules, project, item.file.module_name)
    except Exception:
        return None
    return None if triggered else (result, project.consulted_modules())


def _run_phase_two(todo, rules, project, jobs, progress, context) -> Iterable[tuple[_Loaded, FileResult]]:
    checked = map_isolated(
        _Worker.check,
        todo,
        jobs=jobs,
        context=context,
        died=_crashed,
        run_alone=runs_alone,
        limits=FILE_LIMITS,
        setup=_Worker.setup,
        setup_args=(rules, project),
        size=_size,
    )
    for item, result in checked:
        yield item, result
        if progress:
            progress(1)
