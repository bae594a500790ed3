"""EMA201/EMA202/EMA203/EMA301 over real third-party code: timm 1.0.31 and torchvision 0.28.0.

The sources are located with `importlib.util.find_spec`, which finds a package without
executing it; the checker only reads them. The expected set below was verified by reading
the code (labelling notes in docs/rules-autograd.md): the per-tensor EMA loops of timm's
`ModelEma`, `ModelEmaV2` and `ModelEmaV3(foreach=False)` (EMA301), and no finding anywhere else, among 489 files that hold optimizer moment updates, residual
scalings, GRU updates and mixup blends written in the same `a * d + b * w` shapes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from ema_lint.registry import enabled_rules
from ema_lint.runner import SourceFile, check_files

PINNED = {"timm": "1.0.31", "torchvision": "0.28.0"}

EXPECTED = {
    # ModelEma.update: `ema_v.copy_(ema_v * self.decay + (1. - self.decay) * model_v)` per tensor
    "timm/utils/model_ema.py:76:13 EMA301 EMA update of `ema_v` runs as a Python loop over "
    "`self.ema.state_dict().items()`, one kernel per tensor instead of one `torch._foreach_*` call",
    # ModelEmaV3 with `foreach=False`: one `self._lerp_(ema_v, model_v, ...)` per tensor, over
    # the state dict (with buffers) and over the parameters
    "timm/utils/model_ema.py:324:13 EMA301 EMA update of `ema_v` runs as a Python loop over "
    "`zip(self.module.state_dict().values(), model.state_dict().values())`, one kernel per tensor "
    "instead of one `torch._foreach_*` call",
    "timm/utils/model_ema.py:337:13 EMA301 EMA update of `ema_p` runs as a Python loop over "
    "`zip(ema_params, model_params)`, one kernel per tensor instead of one `torch._foreach_*` call",
    # ModelEmaV2._update: `ema_v.copy_(update_fn(ema_v, model_v))`, `update` passing the EMA lambda
    "timm/utils/model_ema.py:120:13 EMA301 EMA update of `ema_v` runs as a Python loop over "
    "`zip(self.module.state_dict().values(), model.state_dict().values())`, one kernel per tensor "
    "instead of one `torch._foreach_*` call",
}


def _package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    version = re.search(r"__version__\s*=\s*['\"]([^'\"+]+)", (root / "version.py").read_text())
    assert version and version.group(1) == PINNED[name], f"{name} {version and version.group(1)} is not the pinned {PINNED[name]}"
    return root


def test_exact_findings_in_timm_and_torchvision() -> None:
    files = []
    site_packages = set()
    for name in PINNED:
        root = _package_root(name)
        site_packages.add(root.parent)
        files += [SourceFile(str(path), str(root.parent)) for path in sorted(root.rglob("*.py"))]
    (base,) = site_packages
    rules = enabled_rules(["EMA2", "EMA3"], [])
    assert [rule.code for rule in rules] == ["EMA201", "EMA202", "EMA203", "EMA204", "EMA205", "EMA301"]
    report = check_files(files, rules, jobs=min(2, os.cpu_count() or 1))
    found = {
        f"{os.path.relpath(d.path, base)}:{d.start.line}:{d.start.column} {d.code} {d.message}"
        for d in report.diagnostics
    }
    assert found == EXPECTED
