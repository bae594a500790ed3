"""`check_model` against the audit's ground truth, and `transform`'s result, on many real models.

    .venv/bin/python bench/model_sweep.py [--models resnet18 levit_128s ...]

For each timm model (pretrained=False) with `set_grad_checkpointing(True)` and each torchvision
model as built (densenet with memory_efficient=True): the graph analysis's findings, the audit's
findings from two real training steps, their differences, and the audit of the transformed model
(which must be empty). Ends with precision and recall over all models. Models that fx cannot
trace report EMA003 and are transformed through the fallback with `example_inputs`. Imports
torchvision through the test-only shim in tests/vision_models.py (this machine's torchvision
build cannot load its compiled ops).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from vision_models import timm, torchvision  # noqa: E402

import ema_lint  # noqa: E402
from ema_lint.model import default_step  # noqa: E402

TIMM_MODELS = (
    "resnet18", "resnetv2_50", "res2net50_14w_8s", "efficientnet_b0", "mobilenetv3_small_050", "mixnet_s",
    "tinynet_e", "ghostnet_050", "rexnet_100", "regnetx_002", "densenet121", "gernet_s", "repvgg_a0",
    "repvit_m1", "fastvit_t8", "levit_128s", "maxvit_nano_rw_256", "coatnet_nano_rw_224", "efficientformer_l1",
    "mobilevit_xxs", "efficientvit_b0", "convnext_atto", "edgenext_xx_small", "vit_tiny_patch16_224",
)
TORCHVISION_MODELS = (
    "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf",
    "shufflenet_v2_x1_0", "mnasnet0_5", "densenet121", "swin_t", "vit_b_16",
)


def build(source: str, name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if source == "timm":
        model = timm.create_model(name, pretrained=False, num_classes=10)
        model.set_grad_checkpointing(True)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    else:
        options = {"memory_efficient": True} if name.startswith("densenet") else {}
        model = getattr(torchvision.models, name)(num_classes=10, **options)
        size = (3, 224, 224)
    return model.train(), (torch.randn(2, *size),)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", help="names from either library (default: all listed)")
    arguments = parser.parse_args()
    cases = [("timm", n) for n in TIMM_MODELS] + [("torchvision", n) for n in TORCHVISION_MODELS]
    if arguments.models:
        cases = [c for c in cases if c[1] in arguments.models]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':34} {'check s':>7} {'graph':>5} {'audit':>5} {'missed':>6} {'extra':>5} {'after':>5}  note")
    true_positive = graph_total = audit_total = 0
    for source, name in cases:
        model, inputs = build(source, name)
        start = time.perf_counter()
        found = ema_lint.check_model(model)
        seconds = time.perf_counter() - start
        truth = ema_lint.audit(copy.deepcopy(model), default_step(inputs))
        untraceable = any(d.code == "EMA003" for d in found)
        graph = {(d.code, d.module) for d in found if d.code != "EMA003"}
        audited = {(d.code, d.module) for d in truth}
        fixed = ema_lint.transform(model, example_inputs=inputs).model
        after = ema_lint.audit(copy.deepcopy(fixed), default_step(inputs))
        if not untraceable:
            true_positive += len(graph & audited)
            graph_total += len(graph)
            audit_total += len(audited)
        note = "EMA003 untraceable: fallback" if untraceable else ""
        print(
            f"{source + ':' + name:34} {seconds:7.3f} {len(graph):5} {len(audited):5} "
            f"{len(audited - graph):6} {len(graph - audited):5} {len(after):5}  {note}",
            flush=True,
        )
    precision = true_positive / graph_total if graph_total else 1.0
    recall = true_positive / audit_total if audit_total else 1.0
    print(f"traced models: precision {precision:.2f}, recall {recall:.2f} ({true_positive} of {audit_total} audited hazards)")


if __name__ == "__main__":
    main()
