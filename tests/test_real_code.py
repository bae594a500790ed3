"""EMA101, EMA102 and EMA103 over real third-party model code: the installed timm and torchvision packages,
read in place (never imported for analysis; `find_spec` only locates their folders).

Every expected site was confirmed by reading the code: the checkpointed callable reaches a
BatchNorm (or a `_BatchNorm` subclass such as timm's `BatchNormAct2d`) with running stats.
docs/rules-checkpoint.md lists the positive sites missed and why.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ema_lint.registry import enabled_rules
from ema_lint.runner import SourceFile, check_files

# Labelled by reading every timm/torchvision model file that calls a checkpoint entry point:
# a site is positive when, built with the constructor's default arguments, its region
# holds a module with running statistics. docs/rules-checkpoint.md lists the misses.
EXPECTED_EMA101 = {
    ("timm/models/convmixer.py", 133),
    ("timm/models/convmixer.py", 169),
    ("timm/models/cpubone.py", 932),
    ("timm/models/cpubone.py", 963),
    ("timm/models/cspnext.py", 402),
    ("timm/models/cspnext.py", 442),
    ("timm/models/densenet.py", 85),
    ("timm/models/dpn.py", 281),
    ("timm/models/dpn.py", 323),
    ("timm/models/efficientformer.py", 389),
    ("timm/models/efficientformer_v2.py", 647),
    ("timm/models/efficientvim.py", 449),
    ("timm/models/efficientvit_mit.py", 902),
    ("timm/models/efficientvit_mit.py", 934),
    ("timm/models/efficientvit_mit.py", 1073),
    ("timm/models/efficientvit_mit.py", 1105),
    ("timm/models/efficientvit_msra.py", 698),
    ("timm/models/efficientvit_msra.py", 730),
    ("timm/models/fasternet.py", 156),
    ("timm/models/fastvit.py", 1175),
    ("timm/models/ghostnet.py", 806),
    ("timm/models/ghostnet.py", 850),
    ("timm/models/hgnet.py", 394),
    ("timm/models/iformer.py", 465),
    ("timm/models/inception_next.py", 281),
    ("timm/models/lcnetv2.py", 398),
    ("timm/models/lcnetv2.py", 434),
    ("timm/models/levit.py", 839),
    ("timm/models/levit.py", 878),
    ("timm/models/lowformer.py", 666),
    ("timm/models/lowformer.py", 706),
    ("timm/models/nextvit.py", 494),
    ("timm/models/nextvit.py", 671),
    ("timm/models/nextvit.py", 712),
    ("timm/models/regnet.py", 549),
    ("timm/models/repghost.py", 377),
    ("timm/models/repghost.py", 421),
    ("timm/models/repvit.py", 501),
    ("timm/models/repvit.py", 533),
    ("timm/models/resnet.py", 733),
    ("timm/models/resnet.py", 783),
    ("timm/models/rexnet.py", 411),
    ("timm/models/rexnet.py", 462),
    ("timm/models/shvit.py", 280),
    ("timm/models/starnet.py", 223),
    ("timm/models/starnet.py", 264),
    ("timm/models/swiftformer.py", 339),
    ("timm/models/tiny_vit.py", 692),
    ("timm/models/tiny_vit.py", 724),
    ("timm/models/tresnet.py", 310),
    ("timm/models/tresnet.py", 345),
    ("timm/models/vovnet.py", 163),
    ("timm/models/xception_aligned.py", 417),
    ("timm/models/xception_aligned.py", 425),
    ("timm/models/xception_aligned.py", 470),
    ("timm/models/xcit.py", 565),
    ("timm/models/xcit.py", 620),
    ("torchvision/models/densenet.py", 64),
}



def _package_files(name: str) -> list[SourceFile]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{name} is a test dependency and must be installed")
    package = Path(list(spec.submodule_search_locations)[0])
    return [SourceFile(str(p), str(package.parent)) for p in sorted(package.rglob("*.py"))]


def test_ema1xx_sites_in_timm_and_torchvision() -> None:
    files = _package_files("timm") + _package_files("torchvision")
    report = check_files(files, enabled_rules(["EMA101", "EMA102", "EMA103"], []), jobs=2)
    found = {
        (os.path.relpath(d.path, d.path[: d.path.rindex(top)]).replace(os.sep, "/"), d.start.line)
        for d in report.diagnostics
        if d.code == "EMA101"
        for top in [("timm" if f"{os.sep}timm{os.sep}" in d.path else "torchvision")]
    }
    assert found == EXPECTED_EMA101
    # neither package hand-corrects BatchNorm momentum; the one `1 - sqrt(...)` (timm
    # scheduler/wsd_lr.py, a learning-rate cooldown) is not a momentum and must stay silent
    assert not [d for d in report.diagnostics if d.code == "EMA102"]
    # neither uses spectral norm, and no checkpointed timm/torchvision module writes a buffer
    # other than running statistics (EvoNorm's `running_var` is a running statistic)
    assert not [d for d in report.diagnostics if d.code == "EMA103"]
    assert not [d for d in report.diagnostics if d.code == "EMA005"]
