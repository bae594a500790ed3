"""`ema-lint check-model module:factory`: trace a model built by a user-named factory.

Importing the factory executes the user's code; naming it on the command line is the opt-in.
Exit 0 clean, 1 findings, 2 error (the factory cannot be imported or called).
"""

from __future__ import annotations

import importlib
import sys

import click


@click.command("check-model")
@click.argument("factory")
@click.option("--train/--eval", "train_mode", default=True, show_default=True, help="Mode to put the model in before tracing.")
def check_model_command(factory: str, train_mode: bool) -> None:
    """Trace the model returned by FACTORY (`package.module:function`) and report hazards."""
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise click.UsageError("FACTORY must look like `package.module:function`")
    try:
        build = getattr(importlib.import_module(module_name), attribute)
        model = build()
    except Exception as error:  # the user's code failing is an error of the run, exit 2
        click.echo(f"error: cannot build the model from `{factory}`: {type(error).__name__}: {error}", err=True)
        sys.exit(2)
    from ema_lint.model import check_model

    diagnostics = check_model(model.train(train_mode))
    for diagnostic in diagnostics:
        click.echo(
            f"{diagnostic.path}:{diagnostic.start.line}:{diagnostic.start.column}: "
            f"{diagnostic.code} [{diagnostic.module}] {diagnostic.message}"
        )
    sys.exit(1 if any(d.code != "EMA003" for d in diagnostics) else 0)
