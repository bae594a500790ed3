import subprocess
import sys


def test_runtime_imports_only_torch():
    """Fixes and passes substitute `ema_lint.runtime` into user code: it must not pull in the linter."""
    code = (
        "import sys, ema_lint.runtime as r; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'libcst', 'click', 'ema_lint.engine'})); "
        "print(sorted(m for m in sys.modules if m.startswith('ema_lint')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1] == str(
        [
            "ema_lint",
            "ema_lint.runtime",
            "ema_lint.runtime.differentiable_ema",
            "ema_lint.runtime.history",
            "ema_lint.runtime.model_ema",
            "ema_lint.runtime.recompute",
            "ema_lint.runtime.replay",
            "ema_lint.runtime.running_stats",
        ]
    )
