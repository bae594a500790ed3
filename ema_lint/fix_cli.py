"""`ema-lint fix`: show (default) or apply (`--write`) the fixes `check` offers.

Exit codes: 0 nothing left to fix, 1 findings remain (in diff mode, fixes not yet written
count), 2 a file could not be fixed or written. Files `check` cannot read or parse are
findings (EMA001/EMA004) here as there, so they exit 1.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
from typing import Callable

import click

from ema_lint.cli import (
    _display_order,
    _read_lines,
    _styler,
    discovery_options,
    main,
    selection_options,
    open_workspace,
    stdin_option,
    use_colour,
)
from ema_lint.workspace import DiscoveryOptions, Workspace
from ema_lint.fix_run import FileFix, fix_files, unified_diff, why_not_fixed
from ema_lint.fixer import is_applicable
from ema_lint.render import render_text
from ema_lint.text import printable


@contextlib.contextmanager
def _signals_unwind():
    """SIGTERM and SIGHUP end the run through `SystemExit`, so every `finally` runs and no
    temporary file is left next to a user's source."""

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    caught = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, unwind) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@main.command("fix")
@click.argument("paths", nargs=-1, type=click.Path())
@selection_options
@discovery_options
@stdin_option
@click.option(
    "--write",
    is_flag=True,
    help="Apply the fixes (to standard input: print the fixed source). Without it, show a diff and write nothing.",
)
@click.option("--unsafe-fixes", is_flag=True, help="Also apply fixes that may change numerics or gradient flow.")
@click.option("-q", "--quiet", is_flag=True, help="Print diffs and findings only, no summary.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
def fix_command(
    paths,
    select,
    ignore,
    extend_select,
    config,
    extend_exclude,
    force_exclude,
    no_respect_gitignore,
    stdin_filename,
    write,
    unsafe_fixes,
    quiet,
    jobs,
) -> None:
    """Fix PATHS (default: the current folder): show a unified diff, or apply it with --write.
    From standard input (`-`, or --stdin-filename), --write prints the fixed source instead,
    and what remains goes to standard error, as in ruff."""
    discovery = DiscoveryOptions(extend_exclude, not no_respect_gitignore, force_exclude)
    workspace, stdin = open_workspace(paths, select, ignore, extend_select, config, stdin_filename, discovery)
    roots = [stdin.path] if stdin is not None else paths or ["."]
    outcomes = _fix(workspace, stdin, write=write, unsafe=unsafe_fixes, jobs=jobs or os.cpu_count() or 1, roots=roots)
    style = _styler(use_colour())
    if write and stdin is not None:
        sys.exit(_print_fixed_stdin(workspace, outcomes[0]))
    if not write:
        for outcome in outcomes:
            if outcome.changed:
                click.echo(unified_diff(os.path.relpath(outcome.path), outcome.source, outcome.fixed), nl=False)
    remaining = sorted(
        workspace.keep([*workspace.problems, *(d for o in outcomes for d in _left(o, write, unsafe_fixes))]),
        key=_display_order,
    )
    click.echo(render_text(remaining, show_source=False, read_lines=_read_lines, style=style), nl=False)
    for outcome in outcomes:
        if outcome.error is not None:
            click.echo(f"{style('error', fg='red', bold=True)}: {os.path.relpath(outcome.path)}: {outcome.error}", err=True)
        elif outcome.skipped is not None and any(is_applicable(d, unsafe_fixes) for d in outcome.remaining):
            click.echo(f"{style('skipped', fg='yellow', bold=True)}: {os.path.relpath(outcome.path)}: {outcome.skipped}")
    if not quiet:
        click.echo(summary(outcomes, remaining, write=write, unsafe=unsafe_fixes), nl=False)

    if any(outcome.error is not None for outcome in outcomes):
        sys.exit(2)
    failing = [d for d in remaining if workspace.fails(d)]
    pending = not write and any(outcome.changed for outcome in outcomes)
    sys.exit(1 if failing or pending else 0)


def _fix(workspace: Workspace, stdin, *, write: bool, unsafe: bool, jobs: int, roots) -> list[FileFix]:
    with _signals_unwind():
        return fix_files(
            workspace.files,
            workspace.rules,
            unsafe=unsafe,
            write=write and stdin is None,
            keep=workspace.keep,
            jobs=jobs,
            roots=roots,
        )


def _print_fixed_stdin(workspace: Workspace, outcome: FileFix) -> int:
    """ruff's contract for fixing standard input: the fixed source on standard output, what
    remains on standard error. Returns the exit code."""
    style = _styler(use_colour())
    sys.stdout.buffer.write(outcome.fixed if outcome.error is None else outcome.source)
    sys.stdout.flush()
    remaining = workspace.keep([*workspace.problems, *outcome.remaining])
    click.echo(render_text(sorted(remaining, key=_display_order), show_source=False, read_lines=_read_lines, style=style), nl=False, err=True)
    if outcome.skipped is not None:
        click.echo(f"{style('skipped', fg='yellow', bold=True)}: {outcome.skipped}", err=True)
    return 2 if outcome.error is not None else 1 if any(workspace.fails(d) for d in remaining) else 0


def fix_in_check(
    workspace: Workspace,
    stdin,
    *,
    write: bool,
    unsafe: bool,
    jobs: int,
    roots,
    report: Callable[[list], None],
    show_fixes: bool,
    exit_zero: bool,
    exit_non_zero_on_fix: bool,
) -> int:
    """`check --fix` (write, then `report` what remains) and `check --diff` (print the diff
    only), as ruff. Returns the exit code."""
    from ema_lint.cli import RUN_FAILURE_CODES

    outcomes = _fix(workspace, stdin, write=write, unsafe=unsafe, jobs=jobs, roots=roots)
    if write and stdin is not None:
        return _print_fixed_stdin(workspace, outcomes[0])
    errors = [outcome for outcome in outcomes if outcome.error is not None]
    for outcome in errors:
        click.echo(f"error: {printable(os.path.relpath(outcome.path), newline=True)}: {outcome.error}", err=True)
    if not write:
        for outcome in outcomes:
            if outcome.changed:
                click.echo(unified_diff(os.path.relpath(outcome.path), outcome.source, outcome.fixed), nl=False)
        pending = sum(sum(outcome.applied.values()) for outcome in outcomes)
        if pending:
            click.echo(f"Would fix {pending} finding{'' if pending == 1 else 's'}.", err=True)
        # the diff shows only fixes: a bad configuration or a checker failure is said, and fails
        failures = [
            d
            for d in workspace.keep([*workspace.problems, *(d for outcome in outcomes for d in outcome.found)])
            if d.code in RUN_FAILURE_CODES
        ]
        for d in failures:
            click.echo(f"error: {printable(d.path, newline=True)}: {d.code} {printable(d.message)}", err=True)
        return 2 if errors or failures else 1 if pending else 0
    remaining = sorted(
        workspace.keep([*workspace.problems, *(d for outcome in outcomes for d in outcome.remaining)]),
        key=_display_order,
    )
    report(remaining)
    if show_fixes:
        click.echo(applied_fixes(outcomes), nl=False)
    if errors or any(d.code in RUN_FAILURE_CODES for d in remaining):
        return 2
    if exit_zero:
        return 0  # as ruff: --exit-zero wins over --exit-non-zero-on-fix
    applied = any(outcome.applied for outcome in outcomes)
    failing = any(workspace.fails(d) for d in remaining)
    return 1 if failing or (exit_non_zero_on_fix and applied) else 0


def applied_fixes(outcomes: list[FileFix]) -> str:
    """ruff's `--show-fixes` list: per file, how many of each code were fixed."""
    from ema_lint.registry import rule_for

    fixed = [outcome for outcome in outcomes if outcome.applied]
    if not fixed:
        return ""
    total = sum(sum(outcome.applied.values()) for outcome in fixed)
    lines = [f"\nFixed {_count(total, 'finding')}:\n"]
    for outcome in fixed:
        lines.append(f"- {printable(os.path.relpath(outcome.path), newline=True)}:\n")
        for code, count in sorted(outcome.applied.items()):
            lines.append(f"    {count} × {code} ({rule_for(code).name})\n")
    return "".join(lines)


def _left(outcome: FileFix, write: bool, unsafe: bool):
    """Findings this run leaves. Without --write the file on disk is unchanged, so they are
    shown where they are now: the findings of the original that no fix applies to."""
    if write:
        return outcome.remaining
    return [d for d in outcome.found if not is_applicable(d, unsafe) or outcome.error or outcome.skipped]


def summary(outcomes: list[FileFix], remaining, *, write: bool, unsafe: bool) -> str:
    applied = collections.Counter()
    for outcome in outcomes:
        applied.update(outcome.applied)
    files = sum(1 for outcome in outcomes if outcome.applied)
    lines = []
    if applied:
        total = sum(applied.values())
        per_code = ", ".join(f"{code}: {count}" for code, count in sorted(applied.items()))
        verb = "Fixed" if write else "Would fix"
        tail = "." if write else "; rerun with --write to apply."
        lines.append(f"{verb} {_count(total, 'finding')} ({per_code}) in {_count(files, 'file')}{tail}")
    else:
        lines.append("No fixes to apply.")
    by_path = {outcome.path: outcome for outcome in outcomes}
    reasons = collections.Counter(
        why_not_fixed(by_path[d.path], d, unsafe) if d.path in by_path else "the file could not be checked"
        for d in remaining
    )
    if reasons:
        detail = "; ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda r: (-r[1], r[0])))
        verb = "remains" if len(remaining) == 1 else "remain"
        lines.append(f"{_count(len(remaining), 'finding')} {verb}: {detail}.")
    errors = sum(1 for outcome in outcomes if outcome.error is not None)
    if errors:
        lines.append(f"{_count(errors, 'file')} could not be fixed; see the errors above.")
    return "".join(f"{line}\n" for line in lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
