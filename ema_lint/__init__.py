"""ema-lint: find and fix running-statistics and autograd-history hazards in PyTorch code."""

__version__ = "0.1.0"

# The model API needs torch; `import ema_lint` and `ema-lint check` must not pay for it.
_MODEL_API = {"transform", "check_model", "audit", "TransformResult"}


def __getattr__(name: str):
    if name in _MODEL_API:
        require_torch(f"ema_lint.{name}")
        from ema_lint import model

        return getattr(model, name)
    raise AttributeError(f"module 'ema_lint' has no attribute {name!r}")


def require_torch(what: str) -> None:
    """Raise a clear ImportError when PyTorch, which `what` needs and the linter does not, is
    missing."""
    import importlib.util

    try:
        missing = importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):  # a finder that refuses it, or a stub in sys.modules
        missing = True
    if missing:
        raise ImportError(f"{what} needs PyTorch, which the linter alone does not: pip install 'ema-lint[model]'")
