"""ema-lint: find and fix running-statistics and autograd-history hazards in PyTorch code."""

__version__ = "0.1.0"

# The model API needs torch; `import ema_lint` and `ema-lint check` must not pay for it.
_MODEL_API = {"transform", "check_model", "audit", "TransformResult"}


def __getattr__(name: str):
    if name in _MODEL_API:
        from ema_lint import model

        return getattr(model, name)
    raise AttributeError(f"module 'ema_lint' has no attribute {name!r}")
