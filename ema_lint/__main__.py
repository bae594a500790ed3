"""`python -m ema_lint`. `-m` puts the current folder first on `sys.path`, and the current
folder is usually the tree being checked: its `typing.py` or `torch.py` must never shadow
the real module, so that entry goes before anything else is imported. The package itself
is already loaded, and its submodules are found through its own `__path__`."""

import os
import sys

sys.path[:] = [entry for entry in sys.path if entry not in ("", os.getcwd())]

from ema_lint.cli import run  # noqa: E402

run()
