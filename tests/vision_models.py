"""torchvision and timm for tests, importable on a CPU-only machine.

The installed torchvision wheel's compiled ops cannot load here, and its Python side
registers fake kernels for `torchvision::nms` / `qnms` at import time, which fails when the
op schemas do not exist. Defining the two schemas first lets `import torchvision` (and timm,
which imports it) succeed; no test calls either op. Test-only: ema-lint itself never imports
torchvision.
"""

import torch

_schemas = torch.library.Library("torchvision", "FRAGMENT")
for _schema in (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
):
    try:
        _schemas.define(_schema)
    except RuntimeError:  # already defined by a working torchvision build or an earlier import
        pass

import timm  # noqa: E402
import torchvision  # noqa: E402

__all__ = ["timm", "torchvision"]
