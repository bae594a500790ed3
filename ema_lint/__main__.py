from ema_lint.cli import run

run()
