"""The `ema-lint` command line. Exit codes as ruff: 0 clean, 1 findings, 2 usage or internal error."""

from __future__ import annotations

import os
import stat
import sys
from typing import Callable, Sequence

import click

from ema_lint import __version__
from ema_lint.check_model_cli import check_model_command
from ema_lint.diagnostics import Diagnostic
from ema_lint.config import parse_override
from ema_lint.notebook import Notebook, NotebookError
from ema_lint.registry import SOURCE_RULES, TOOL_CODES, is_known_selector
from ema_lint.render import (
    FORMATS,
    render_concise,
    render_github,
    render_json,
    render_sarif,
    render_summary,
    render_text,
)
from ema_lint.discovery import standard_input
from ema_lint.runner import MAX_FILE_BYTES, SourceFile, check_files
from ema_lint.workspace import Workspace

# Below this many files a progress bar only flickers.
PROGRESS_MIN_FILES = 200


def _split_selectors(ctx, param, values: Sequence[str]) -> tuple[str, ...]:
    selectors = tuple(s.strip() for value in values for s in value.split(",") if s.strip())
    unknown = [s for s in selectors if not is_known_selector(s)]
    if unknown:
        raise click.BadParameter(f"unknown rule selector(s): {', '.join(unknown)}", ctx, param)
    return selectors


def _split_config(ctx, param, values: Sequence[str]) -> tuple[str | None, dict]:
    """`--config` values as (the one configuration file, the `KEY = VALUE` overrides)."""
    config_file, overrides = None, {}
    for value in values:
        if os.path.isfile(value):
            if config_file is not None:
                raise click.BadParameter("only one configuration file may be given", ctx, param)
            config_file = value
            continue
        try:
            overrides.update(parse_override(value))
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param) from None
    return config_file, overrides


def selection_options(function):
    """--select/--ignore/--extend-select/--config, shared by `check` and `fix`."""
    for name, text in (
        (
            "--config",
            "A configuration file for every file (default: each file's nearest one), or a TOML "
            "`KEY = VALUE` that overrides the configuration (repeatable).",
        ),
        ("--extend-select", "Codes or prefixes to enable on top of the selection."),
        ("--ignore", "Codes or prefixes to disable (comma-separated, repeatable)."),
        ("--select", "Codes or prefixes to enable instead of the configured set (e.g. EMA1,EMA201)."),
    ):
        if name == "--config":
            function = click.option(name, multiple=True, callback=_split_config, help=text)(function)
        else:
            function = click.option(name, multiple=True, callback=_split_selectors, help=text)(function)
    return function


def stdin_option(function):
    """--stdin-filename, shared by `check` and `fix`."""
    return click.option(
        "--stdin-filename",
        type=click.Path(),
        help="Read the source from standard input (also with the path `-`) and check it as this file: "
        "its settings, its name in findings.",
    )(function)


def standard_input_file(paths: Sequence[str], stdin_filename: str | None) -> SourceFile | None:
    """The file to read from standard input, when the paths say so (`-`, or none with
    --stdin-filename)."""
    if tuple(paths) == ("-",) or (not paths and stdin_filename is not None):
        return standard_input(stdin_filename, sys.stdin.buffer.read(MAX_FILE_BYTES + 1))
    if "-" in paths or stdin_filename is not None:
        raise click.UsageError("standard input (`-` or --stdin-filename) cannot be combined with other paths")
    return None


def open_workspace(paths, select, ignore, extend_select, config, stdin_filename) -> tuple[Workspace, SourceFile | None]:
    """The workspace `check` and `fix` work in, from their shared options, and the file read
    from standard input if any; its warnings go to stderr."""
    config_file, overrides = config
    stdin = standard_input_file(paths, stdin_filename)
    workspace = Workspace.open(
        paths,
        select=select,
        ignore=ignore,
        extend_select=extend_select,
        config_path=config_file,
        overrides=overrides,
        stdin=stdin,
    )
    for warning in workspace.warnings:
        click.echo(f"warning: {warning}", err=True)
    return workspace, stdin


def use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _styler(colour: bool):
    if colour:
        return click.style
    return lambda text, **_: text


def _display_order(diagnostic: Diagnostic) -> tuple:
    return (os.path.abspath(diagnostic.path), diagnostic.sort_key())


def _read_lines(diagnostic: Diagnostic) -> list[str] | None:
    """The lines a code frame shows: the file's, or the finding's notebook cell's. Never read
    through a link (a checked tree may link to any file: `p.py -> /etc/passwd`) nor from
    anything but a regular file (a FIFO would block)."""
    path = diagnostic.path
    if os.path.realpath(path) != os.path.abspath(path):
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None
            raw = handle.read(MAX_FILE_BYTES)
    except OSError:
        return None
    return _lines_of(raw, diagnostic)


def _lines_of(raw: bytes, diagnostic: Diagnostic) -> list[str] | None:
    if diagnostic.cell is None:
        return raw.decode("utf-8", errors="replace").splitlines()
    try:
        return Notebook(raw).cell_lines(diagnostic.cell)
    except NotebookError:
        return None


def lines_reader(stdin: SourceFile | None) -> Callable[[Diagnostic], list[str] | None]:
    """What code frames are read from: the files, and for standard input the bytes read
    (an editor's unsaved buffer, not the file of that name on disk)."""
    if stdin is None:
        return _read_lines
    return lambda diagnostic: _lines_of(stdin.content, diagnostic) if diagnostic.path == stdin.path else None


def emit(
    diagnostics: Sequence[Diagnostic],
    output_format: str,
    *,
    show_source: bool = False,
    quiet: bool = False,
    statistics: bool = False,
    read_lines: Callable[[Diagnostic], list[str] | None] = _read_lines,
) -> None:
    """Print `diagnostics` in `output_format` (one of FORMATS), as `check` and `check-model` do."""
    if output_format == "text":
        style = _styler(use_colour())
        click.echo(render_text(diagnostics, show_source=show_source, read_lines=read_lines, style=style), nl=False)
        if not quiet:
            click.echo(render_summary(diagnostics, statistics=statistics), nl=False)
    elif output_format == "concise":
        click.echo(render_concise(diagnostics), nl=False)
        if not quiet:
            click.echo(render_summary(diagnostics, statistics=statistics), nl=False)
    elif output_format == "json":
        click.echo(render_json(diagnostics), nl=False)
    elif output_format == "sarif":
        click.echo(render_sarif(diagnostics, os.getcwd()), nl=False)
    else:
        click.echo(render_github(diagnostics), nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ema-lint")
def main() -> None:
    """Find and fix running-statistics and autograd-history hazards in PyTorch code."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@selection_options
@stdin_option
@click.option("--output-format", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--show-source", is_flag=True, help="Show a code frame under each finding.")
@click.option("--statistics", is_flag=True, help="Count findings per code.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only, no summary.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the result cache.")
@click.option(
    "--cache-dir",
    # not validated here: a cache folder that cannot be used is a note, never a usage error
    type=click.Path(),
    envvar="EMA_LINT_CACHE_DIR",
    help="Folder for the result cache (default: the user's cache folder; env EMA_LINT_CACHE_DIR).",
)
def check(
    paths,
    select,
    ignore,
    extend_select,
    config,
    stdin_filename,
    output_format,
    show_source,
    statistics,
    exit_zero,
    quiet,
    jobs,
    no_cache,
    cache_dir,
) -> None:
    """Check PATHS (default: the current folder) without importing or running them."""
    workspace, stdin = open_workspace(paths, select, ignore, extend_select, config, stdin_filename)
    jobs = jobs or os.cpu_count() or 1
    cache = None if no_cache or stdin is not None else workspace.cache(cache_dir)
    show_progress = (
        sys.stderr.isatty() and not os.environ.get("CI") and not quiet and len(workspace.files) >= PROGRESS_MIN_FILES
    )
    if show_progress:
        with click.progressbar(length=len(workspace.files), label="Checking", file=sys.stderr) as bar:
            report = check_files(workspace.files, workspace.rules, jobs=jobs, cache=cache, progress=bar.update)
    else:
        report = check_files(workspace.files, workspace.rules, jobs=jobs, cache=cache)
    diagnostics = sorted(workspace.keep([*workspace.problems, *report.diagnostics]), key=_display_order)
    for note in cache.notes if cache is not None else ():
        click.echo(f"note: {note}", err=True)

    emit(
        diagnostics,
        output_format,
        show_source=show_source,
        quiet=quiet,
        statistics=statistics,
        read_lines=lines_reader(stdin),
    )
    failing = [d for d in diagnostics if workspace.fails(d)]
    sys.exit(0 if exit_zero or not failing else 1)


@main.command()
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="List every code.")
def rule(code: str | None, show_all: bool) -> None:
    """Explain rule CODE (What it does / Why is this bad? / Example / Use instead / Fix safety)."""
    from ema_lint.docs import rule_doc

    if show_all or code is None:
        for tool in TOOL_CODES:
            click.echo(f"{tool.code}  {tool.name:<34} {tool.severity.value:<8} {tool.summary}")
        for source_rule in SOURCE_RULES:
            click.echo(
                f"{source_rule.code}  {source_rule.name:<34} {source_rule.severity.value:<8} {source_rule.summary}"
            )
        return
    try:
        click.echo(rule_doc(code), nl=False)
    except KeyError:
        raise click.BadParameter(f"unknown code {code!r}; see `ema-lint rule --all`", param_hint="CODE")


main.add_command(check_model_command)


def run() -> None:
    """Console entry: any unexpected exception is an internal error, exit 2, never a traceback-only crash."""
    try:
        main(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as error:  # last resort: report and exit 2 as documented
        click.echo(f"ema-lint: internal error: {type(error).__name__}: {error}", err=True)
        sys.exit(2)


# `fix` registers itself on `main`; imported last because it reuses the options above.
import ema_lint.fix_cli  # noqa: E402,F401
