"""torch.fx analyses and rewrite passes, installed as `ema_lint.passes`."""
