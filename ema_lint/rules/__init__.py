"""Source rules, one per file; the ordered list lives in `ema_lint.registry`."""
