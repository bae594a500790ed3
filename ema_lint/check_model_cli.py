"""`ema-lint check-model module:factory`: analyse a model built by a user-named factory.

Importing the factory executes the user's code; naming it on the command line is the opt-in.
The factory is imported as `python -m` would, with the current folder first on the path.
Exit 0 clean, 1 findings at or above `fail-on`, 2 error (the factory cannot be imported or
called, or an input shape is malformed).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ema_lint import require_torch
from ema_lint.config import SettingsResolver
from ema_lint.engine import severity_at_least
from ema_lint.render import FORMATS


def _shapes(context: click.Context, parameter: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    shapes = []
    for value in values:
        try:
            shape = tuple(int(size) for size in value.split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of sizes such as 2,3,224,224")
        if not shape or min(shape) < 1:
            raise click.BadParameter(f"{value!r}: every size must be a positive integer")
        shapes.append(shape)
    return tuple(shapes)


@click.command("check-model")
@click.argument("factory")
@click.option(
    "--train/--eval",
    "train_mode",
    default=True,
    show_default=True,
    help="Mode to put the model in: running statistics update, and Hugging Face layers checkpoint, only in training.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    callback=_shapes,
    help="Shape of one example input, e.g. 2,3,224,224 (repeatable, in the forward's argument order; "
    "random normal floats): the hazards are then also measured by two real training steps on a copy.",
)
@click.option("--output-format", type=click.Choice(FORMATS), default="concise", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print findings only, no summary.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Configuration file for `fail-on` (default: the current folder's nearest one).",
)
def check_model_command(factory, train_mode, input_shapes, output_format, quiet, config_file) -> None:
    """Analyse the model returned by FACTORY (`package.module:function`) and report hazards."""
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise click.UsageError("FACTORY must look like `package.module:function`")
    try:
        require_torch("check-model")
    except ImportError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        build = getattr(importlib.import_module(module_name), attribute)
        model = build()
    except Exception as error:  # the user's code failing is an error of the run, exit 2
        click.echo(f"error: cannot build the model from `{factory}`: {type(error).__name__}: {error}", err=True)
        sys.exit(2)
    import torch

    from ema_lint.cli import RUN_FAILURE_CODES, emit
    from ema_lint.model import check_model

    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(shape, generator=generator) for shape in input_shapes) or None
    settings = SettingsResolver(config_file).for_folder(os.getcwd())
    diagnostics = [*settings.problems, *check_model(model.train(train_mode), inputs)]
    emit(diagnostics, output_format, quiet=quiet)
    # EMA003 says how the model was analysed; it is never a hazard.
    failing = [d for d in diagnostics if d.code != "EMA003" and severity_at_least(d, settings.fail_on)]
    sys.exit(2 if any(d.code in RUN_FAILURE_CODES for d in diagnostics) else 1 if failing else 0)
