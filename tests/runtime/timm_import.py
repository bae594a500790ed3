"""Import timm on a machine whose torchvision build cannot load its compiled ops.

torchvision registers Python fake kernels for `torchvision::nms`/`qnms` at import time and
fails when the compiled library did not define their schemas. Defining the schemas (no
kernels) lets the pure-Python parts of torchvision and timm import. Test-only.
"""

import torch

_torchvision_fragment = None


def _nms_schema_exists() -> bool:
    try:
        torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        return False
    return True


def import_timm():
    global _torchvision_fragment
    if _torchvision_fragment is None and not _nms_schema_exists():
        _torchvision_fragment = torch.library.Library("torchvision", "FRAGMENT")
        _torchvision_fragment.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_fragment.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm

    return timm
