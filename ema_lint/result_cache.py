"""The result cache: phase-1 facts and phase-2 results of unchanged files, kept between runs.

Safety: the cache is data, never code. It is JSON rebuilt through `cache_codec`'s typed
decoders, and any file that does not decode to exactly the declared shape is ignored and
rebuilt. It lives outside the checked tree by default (the user's cache folder, from
`platformdirs`), so a repository cannot ship results for its own files. It is read and
written through a descriptor of a folder checked to be a real folder this user owns (never
a link), the file opened without following links or waiting on a FIFO, and stored positions
are range-checked. A write goes to a temporary file created exclusively, then renamed over
the old one, so a planted symlink at any of those names is never followed. A cache that cannot be read or written costs speed, never the run:
the problem is kept in `notes` for the caller to print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import functools
from typing import TYPE_CHECKING

from ema_lint import __version__
from ema_lint.cache_codec import CacheFormatError, decoder, encode
from ema_lint.diagnostics import Diagnostic
from ema_lint.engine import FileResult
from ema_lint.project import ModuleFacts, ProjectIndex

if TYPE_CHECKING:
    from ema_lint.runner import _Loaded

# Bumped whenever the stored layout changes; older files are then simply not read.
FORMAT = 1
CACHE_DIR_VARIABLE = "EMA_LINT_CACHE_DIR"


def default_cache_dir() -> str:
    """`$EMA_LINT_CACHE_DIR`, else the user's cache folder for ema-lint."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return configured
    import platformdirs

    return platformdirs.user_cache_dir("ema-lint", appauthor=False)


@dataclasses.dataclass(frozen=True)
class _StoredFacts:
    path: str
    digest: str
    facts: ModuleFacts | None
    syntax_error: Diagnostic | None


@dataclasses.dataclass(frozen=True)
class _StoredResult:
    path: str
    digest: str
    project_key: str
    result: FileResult
    # modules whose on-demand facts the check read, with their content digests then
    consulted: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class _Stored:
    format: int
    key: str
    facts: tuple[_StoredFacts, ...]
    results: tuple[_StoredResult, ...]


class ResultCache:
    """Content-hash cache in one JSON file per (tool version, checker sources, rule set,
    project root).

    Phase-1 facts are keyed by content alone; phase-2 results also by the project index,
    since cross-file facts can change a file's findings: by the phase-1 facts of every
    module, and, stored with each result, the contents of the modules whose further facts
    (class facts, function returns) were extracted on demand while checking it.
    """

    def __init__(self, directory: str, settings_key: str, root: str = "") -> None:
        self.key = hashlib.blake2b(
            f"{__version__}\0{checker_fingerprint()}\0{settings_key}\0{os.path.abspath(root)}".encode(),
            digest_size=12,
        ).hexdigest()
        self.directory = directory
        self.name = f"{self.key}.json"
        self.notes: list[str] = []
        self._facts: dict[tuple[str, str], tuple[ModuleFacts | None, Diagnostic | None]] = {}
        self._results: dict[tuple[str, str, str], tuple[FileResult, tuple[tuple[str, str], ...]]] = {}
        self._dirty = False
        self._read()
        self._project_keys: dict[int, str] = {}
        self._module_digests: dict[tuple[int, str], str] = {}
        # entries this run read or wrote; the rest belong to old file contents and are dropped
        self._live_facts: set = set()
        self._live_results: set = set()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.name)

    def _read(self) -> None:
        """Read the cache only from a real folder this user owns, a regular file in it opened
        without following links or waiting on a FIFO; anything else is ignored."""
        try:
            folder = _open_owned_folder(self.directory)
        except FileNotFoundError:
            return
        except OSError as error:
            self.notes.append(f"cache not read ({self.directory}): {error.strerror or error}")
            return
        try:
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            descriptor = os.open(self.name, flags, dir_fd=folder)
        except FileNotFoundError:
            os.close(folder)
            return
        except OSError as error:
            os.close(folder)
            self.notes.append(f"cache not read ({self.path}): {error.strerror or error}")
            return
        os.close(folder)
        try:
            with os.fdopen(descriptor, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    self.notes.append(f"cache ignored ({self.path}): not a regular file")
                    return
                stored = decoder(_Stored)(json.loads(handle.read()))
                _check_positions(stored)
        except (OSError, ValueError, RecursionError) as error:
            # includes CacheFormatError and JSON errors: anything not exactly ours is rebuilt
            self.notes.append(f"cache ignored and rebuilt ({self.path}): {error}")
            return
        if stored.format != FORMAT or stored.key != self.key:
            return
        self._facts = {(s.path, s.digest): (s.facts, s.syntax_error) for s in stored.facts}
        self._results = {(s.path, s.digest, s.project_key): (s.result, s.consulted) for s in stored.results}

    def _project_key(self, project: ProjectIndex) -> str:
        ident = id(project)
        if ident not in self._project_keys:
            # `repr`: equal facts give equal text, whether just extracted or read back
            digest = hashlib.blake2b(digest_size=12)
            for name in sorted(project.modules):
                digest.update(repr(project.modules[name]).encode())
            self._project_keys[ident] = digest.hexdigest()
        return self._project_keys[ident]

    def fill_facts(self, loaded: "list[_Loaded]") -> None:
        for item in loaded:
            key = (item.file.path, item.digest)
            if item.source is not None and key in self._facts:
                facts, syntax_error = self._facts[key]
                # the same bytes mean other facts under another module name or import renames
                if facts is not None and (facts.module_name, facts.import_renames) != (
                    item.file.module_name,
                    item.file.import_renames,
                ):
                    continue
                item.facts, item.syntax_error = facts, syntax_error
                self._live_facts.add(key)

    def store_facts(self, loaded: "list[_Loaded]") -> None:
        for item in loaded:
            key = (item.file.path, item.digest)
            if item.summarized and key not in self._facts:
                self._facts[key] = (item.facts, item.syntax_error)
                self._live_facts.add(key)
                self._dirty = True

    def _module_digest(self, project: ProjectIndex, module: str) -> str:
        key = (id(project), module)
        if key not in self._module_digests:
            source = project.sources.get(module)
            self._module_digests[key] = "" if source is None else hashlib.blake2b(source[0], digest_size=16).hexdigest()
        return self._module_digests[key]

    def result(self, item: "_Loaded", project: ProjectIndex) -> FileResult | None:
        key = (item.file.path, item.digest, self._project_key(project))
        if key not in self._results:
            return None
        result, consulted = self._results[key]
        if any(self._module_digest(project, module) != digest for module, digest in consulted):
            return None
        self._live_results.add(key)
        return result

    def store_result(self, item: "_Loaded", project: ProjectIndex, result: FileResult, consulted: list[str]) -> None:
        if not result.limited and not any(d.code == "EMA005" for d in result.diagnostics):
            key = (item.file.path, item.digest, self._project_key(project))
            self._results[key] = (result, tuple((m, self._module_digest(project, m)) for m in consulted))
            self._live_results.add(key)
            self._dirty = True

    def save(self) -> None:
        stale = len(self._facts) > len(self._live_facts) or len(self._results) > len(self._live_results)
        if not (self._dirty or stale):
            return
        stored = _Stored(
            FORMAT,
            self.key,
            tuple(_StoredFacts(p, d, *v) for (p, d), v in self._facts.items() if (p, d) in self._live_facts),
            tuple(
                _StoredResult(p, d, k, *v) for (p, d, k), v in self._results.items() if (p, d, k) in self._live_results
            ),
        )
        try:
            _write_owned(self.directory, {".gitignore": b"*\n"}, {self.name: json.dumps(encode(stored)).encode()})
        except OSError as error:
            self.notes.append(f"cache not written ({self.directory}): {error.strerror or error}")


@functools.lru_cache(maxsize=1)
def checker_fingerprint() -> str:
    """Hash of the checker's own sources: an edited rule (or an upgrade that kept the version
    number, as an editable install does) must not be answered from old results."""
    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.blake2b(digest_size=12)
    for folder, folders, names in os.walk(package):
        folders[:] = sorted(f for f in folders if f not in ("__pycache__", "runtime"))
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, package).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _check_positions(stored: _Stored) -> None:
    """Positions a renderer can use, on the file each result belongs to."""
    for entry in stored.results:
        for diagnostic in entry.result.diagnostics:
            start, end = diagnostic.start, diagnostic.end
            if diagnostic.path != entry.path or not (
                1 <= start.line <= end.line < 2**31 and 1 <= start.column < 2**31 and 1 <= end.column < 2**31
            ):
                raise CacheFormatError(f"a stored position is out of range for {entry.path}")


def _open_owned_folder(directory: str) -> int:
    """A descriptor of `directory`, which must be a real folder (not a link) this user owns."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    folder = os.open(directory, flags)
    info = os.fstat(folder)
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        os.close(folder)
        raise OSError(f"{directory} is not a folder owned by this user")
    return folder


def _write_owned(directory: str, once: dict[str, bytes], replaced: dict[str, bytes]) -> None:
    """Write files into `directory`, which must be a real folder this user owns (created
    private if missing): `once` files only when absent, `replaced` ones atomically. Never
    follows a symlink at the folder or at any name in it."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    folder = _open_owned_folder(directory)
    try:
        for name, content in once.items():
            _write_new(folder, name, content, replace=False)
        for name, content in replaced.items():
            _write_new(folder, name, content, replace=True)
    finally:
        os.close(folder)


def _create_exclusively(folder: int, name: str, content: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(name, flags, 0o600, dir_fd=folder)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _write_new(folder: int, name: str, content: bytes, *, replace: bool) -> None:
    temporary = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    # O_EXCL: a planted file or symlink at the temporary name makes this fail, never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600, dir_fd=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        if replace:
            # rename replaces whatever is at `name`, a symlink included, without following it
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        else:
            try:
                os.link(temporary, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError:
                # no hard links here (vfat, some network mounts): create it exclusively
                _create_exclusively(folder, name, content)
    finally:
        try:
            os.unlink(temporary, dir_fd=folder)
        except FileNotFoundError:
            pass
