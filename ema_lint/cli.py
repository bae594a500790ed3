"""The `ema-lint` command line. Exit codes as ruff: 0 clean, 1 findings, 2 usage or internal error."""

from __future__ import annotations

import json
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
from ema_lint.registry import SOURCE_RULES, TOOL_CODES, enabled_rules, is_known_selector, rule_for
from ema_lint.render import (
    FORMATS,
    render_concise,
    render_grouped,
    render_statistics,
    render_statistics_json,
    render_summary,
    render_text,
)
from ema_lint.report_formats import RENDERERS
from ema_lint.text import printable
from ema_lint.discovery import standard_input
from ema_lint.runner import MAX_FILE_BYTES, SourceFile, check_files
from ema_lint.workspace import DiscoveryOptions, Workspace

# Findings that say the run itself went wrong (bad configuration, a checker bug): exit 2, as
# ruff exits on a configuration error or a panic, whatever `--exit-zero` says.
RUN_FAILURE_CODES = ("EMA002", "EMA005")

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


def _split_patterns(ctx, param, values: Sequence[str]) -> tuple[str, ...]:
    return tuple(p.strip() for value in values for p in value.split(",") if p.strip())


def discovery_options(function):
    """--extend-exclude/--force-exclude/--no-respect-gitignore, shared by `check` and `fix`."""
    function = click.option(
        "--no-respect-gitignore",
        is_flag=True,
        help="Check files that .gitignore files and .git/info/exclude leave out.",
    )(function)
    function = click.option(
        "--force-exclude",
        is_flag=True,
        help="Apply exclusions (exclude, extend-exclude, gitignore) to files named on the command line too, "
        "as pre-commit needs.",
    )(function)
    return click.option(
        "--extend-exclude",
        multiple=True,
        callback=_split_patterns,
        help="gitignore-style patterns to exclude on top of the configured ones (comma-separated, repeatable).",
    )(function)


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


def open_workspace(
    paths, select, ignore, extend_select, config, stdin_filename, discovery: DiscoveryOptions
) -> tuple[Workspace, SourceFile | None]:
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
        discovery=discovery,
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


def render(
    diagnostics: Sequence[Diagnostic],
    output_format: str,
    *,
    show_source: bool = False,
    quiet: bool = False,
    statistics: bool = False,
    colour: bool = False,
    read_lines: Callable[[Diagnostic], list[str] | None] = _read_lines,
) -> str:
    """`diagnostics` in `output_format` (one of FORMATS), as `check` and `check-model` print
    them. `statistics` replaces the findings with per-code counts (JSON for the JSON formats),
    as in ruff; the summary follows the human formats unless `quiet`."""
    human = output_format in ("text", "full", "concise", "grouped")
    if statistics and output_format in ("json", "json-lines"):
        return render_statistics_json(diagnostics)
    if statistics:
        body = render_statistics(diagnostics)
    elif output_format in ("text", "full"):
        body = render_text(
            diagnostics,
            show_source=show_source or output_format == "full",
            read_lines=read_lines,
            style=_styler(colour),
        )
    elif output_format == "concise":
        body = render_concise(diagnostics)
    elif output_format == "grouped":
        body = render_grouped(diagnostics)
    else:
        return RENDERERS[output_format](diagnostics, os.getcwd())
    return body + (render_summary(diagnostics) if (human or statistics) and not quiet else "")


def emit(diagnostics: Sequence[Diagnostic], output_format: str, *, output_file: str | None = None, **options) -> None:
    """Print `diagnostics` (see `render`), or write them to `output_file`."""
    if output_file is None:
        click.echo(render(diagnostics, output_format, colour=use_colour(), **options), nl=False)
        return
    text = render(diagnostics, output_format, **options)
    folder = os.path.dirname(output_file)
    if folder:
        os.makedirs(folder, exist_ok=True)
    # a file name that is not UTF-8 is written back as the bytes it was read from
    with open(output_file, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)


def exit_code(diagnostics: Sequence[Diagnostic], workspace: Workspace, *, exit_zero: bool) -> int:
    """2 when the run itself went wrong, else 1 for a finding that fails the run, else 0."""
    if any(d.code in RUN_FAILURE_CODES for d in diagnostics):
        return 2
    return 0 if exit_zero or not any(workspace.fails(d) for d in diagnostics) else 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="ema-lint")
def main() -> None:
    """Find and fix running-statistics and autograd-history hazards in PyTorch code."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@selection_options
@discovery_options
@stdin_option
@click.option("--output-format", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("-o", "--output-file", type=click.Path(dir_okay=False), help="Write the findings to this file, not standard output.")
@click.option("--show-source", is_flag=True, help="Show a code frame under each finding (the `full` format).")
@click.option("--statistics", is_flag=True, help="Print the number of findings per code instead of the findings.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings.")
@click.option("--fix", "apply_fixes", is_flag=True, help="Apply safe fixes, then report what remains (as `fix --write`).")
@click.option("--unsafe-fixes", is_flag=True, help="With --fix or --diff, also apply fixes that may change numerics.")
@click.option("--diff", "show_diff", is_flag=True, help="Print the fixes as a unified diff; write nothing.")
@click.option("--show-fixes", is_flag=True, help="With --fix, list the fixes applied per file.")
@click.option("--exit-non-zero-on-fix", is_flag=True, help="With --fix, exit 1 when a fix was applied, even if nothing remains.")
@click.option("--show-files", is_flag=True, help="List the files that would be checked, and stop.")
@click.option("--show-settings", is_flag=True, help="Print the settings each named path is checked with, and stop.")
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
    extend_exclude,
    force_exclude,
    no_respect_gitignore,
    stdin_filename,
    output_format,
    output_file,
    show_source,
    statistics,
    exit_zero,
    apply_fixes,
    unsafe_fixes,
    show_diff,
    show_fixes,
    exit_non_zero_on_fix,
    show_files,
    show_settings,
    quiet,
    jobs,
    no_cache,
    cache_dir,
) -> None:
    """Check PATHS (default: the current folder) without importing or running them."""
    discovery = DiscoveryOptions(extend_exclude, not no_respect_gitignore, force_exclude)
    workspace, stdin = open_workspace(paths, select, ignore, extend_select, config, stdin_filename, discovery)
    jobs = jobs or os.cpu_count() or 1
    if show_files:
        for problem in workspace.problems:
            click.echo(f"warning: {printable(problem.path, newline=True)}: {problem.code} {printable(problem.message)}", err=True)
        click.echo("".join(f"{printable(os.path.abspath(f.path), newline=True)}\n" for f in workspace.files), nl=False)
        return
    if show_settings:
        click.echo(describe_settings(workspace, paths), nl=False)
        return
    def print_findings(found: Sequence[Diagnostic]) -> None:
        emit(
            found,
            output_format,
            output_file=output_file,
            show_source=show_source,
            quiet=quiet,
            statistics=statistics,
            read_lines=lines_reader(stdin),
        )

    if apply_fixes or show_diff:
        from ema_lint.fix_cli import fix_in_check

        sys.exit(
            fix_in_check(
                workspace,
                stdin,
                write=apply_fixes and not show_diff,
                unsafe=unsafe_fixes,
                jobs=jobs,
                roots=[stdin.path] if stdin is not None else paths or ["."],
                report=print_findings,
                show_fixes=show_fixes,
                exit_zero=exit_zero,
                exit_non_zero_on_fix=exit_non_zero_on_fix,
            )
        )
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
    print_findings(diagnostics)
    sys.exit(exit_code(diagnostics, workspace, exit_zero=exit_zero))


def describe_settings(workspace: Workspace, paths: Sequence[str]) -> str:
    """Each named path's (default: the first file's) resolved settings, in the configuration's
    own TOML keys, with the file they come from."""
    named = list(paths) or ([workspace.files[0].path] if workspace.files else ["."])
    out = []
    for path in named:
        settings = workspace.settings_for(path) if os.path.isfile(path) else workspace.resolver.for_folder(path)
        select, ignore = workspace.selection.over(settings)
        out.append(f"Settings for {printable(path, newline=True)}\n")
        out.append(f"  configuration: {settings.config_path or '(defaults)'}\n")
        out.append(f"  root: {settings.root}\n")
        out.append(f"  select: {list(select)}\n")
        out.append(f"  ignore: {list(ignore)}\n")
        out.append(f"  exclude: {list(settings.exclude)}\n")
        out.append(f"  per-file-ignores: { {pattern: list(codes) for pattern, codes in settings.per_file_ignores} }\n")
        out.append(f"  fail-on: {settings.fail_on.value}\n")
        out.append(f"  rules: {[rule.code for rule in enabled_rules(select, ignore)]}\n")
    return "".join(out)


@main.command()
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="List every code.")
@click.option("--output-format", type=click.Choice(("text", "json")), default="text", show_default=True)
def rule(code: str | None, show_all: bool, output_format: str) -> None:
    """Explain rule CODE, given by code (EMA201) or by name (loss-accumulated-with-graph):
    What it does / Why is this bad? / Example / Use instead / Fix safety."""
    from ema_lint.docs import rule_doc

    entries = [(t.code, t.name, t.severity.value, t.summary, None) for t in TOOL_CODES] + [
        (r.code, r.name, r.severity.value, r.summary, _fix_availability(r)) for r in SOURCE_RULES
    ]
    if show_all or code is None:
        if output_format == "json":
            click.echo(json.dumps([_rule_record(*entry, rule_doc(entry[0])) for entry in entries], indent=2))
            return
        for entry_code, name, severity, summary, _ in entries:
            click.echo(f"{entry_code}  {name:<34} {severity:<8} {summary}")
        return
    by_name = {entry[1]: entry for entry in entries}
    by_code = {entry[0]: entry for entry in entries}
    entry = by_code.get(code.upper()) or by_name.get(code.lower())
    if entry is None:
        raise click.BadParameter(f"unknown code or name {code!r}; see `ema-lint rule --all`", param_hint="CODE")
    if output_format == "json":
        click.echo(json.dumps(_rule_record(*entry, rule_doc(entry[0])), indent=2))
    else:
        click.echo(rule_doc(entry[0]), nl=False)


def _fix_availability(source_rule) -> str:
    """ruff's wording, read from the rule's tested examples: fixes depend on the code found."""
    if any(example.fixed for example in source_rule.INVALID):
        return "Fix is sometimes available."
    return "Fix is not available."


def _rule_record(code: str, name: str, severity: str, summary: str, fix: str | None, explanation: str) -> dict:
    # ruff's `rule --output-format json` keys, where they apply
    return {
        "code": code,
        "name": name,
        "severity": severity,
        "summary": summary,
        "fix": fix or "Fix is not available.",
        "kind": "tool" if rule_for(code) is None else "source",
        "explanation": explanation,
    }


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
