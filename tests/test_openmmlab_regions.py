"""OpenMMLab backbones: ResNet blocks imported from an OpenMMLab package hold BatchNorm unless
given another `norm_cfg`, and a `train()` that puts norms in eval only under a flag that is off
by default (`norm_eval=False`) leaves them training."""

from __future__ import annotations

import textwrap

from ema_lint.engine import check_source
from ema_lint.registry import rule_for


def _findings(source: str) -> list[int]:
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for("EMA101")])
    return [d.start.line for d in result.diagnostics if d.code == "EMA101"]


BACKBONE = """
import torch.utils.checkpoint as checkpoint
from torch import nn
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck


class Backbone(nn.Module):
    def __init__(self, depth=2, norm_cfg=dict(type="BN"), with_cp=False, norm_eval=NORM_EVAL):
        super().__init__()
        layers = []
        for i in range(depth):
            layer = [BLOCK]
            layers.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*layers)
        self.with_cp = with_cp
        self.norm_eval = norm_eval

    def train(self, mode=True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    def forward(self, x):
        for layer in self.layers:
            x = checkpoint.checkpoint(layer, x) if self.with_cp else layer(x)
        return x
"""


def _backbone(block: str, norm_eval: str = "False") -> str:
    return BACKBONE.replace("BLOCK", block).replace("NORM_EVAL", norm_eval)


def test_an_openmmlab_resnet_block_holds_batch_norm_by_default_or_by_config() -> None:
    assert _findings(_backbone("BasicBlock(4, 4)")) == [27]
    assert _findings(_backbone("Bottleneck(4, 1, norm_cfg=norm_cfg)")) == [27]


def test_an_openmmlab_resnet_block_given_another_norm_holds_none() -> None:
    assert _findings(_backbone("BasicBlock(4, 4, norm_cfg=dict(type='LN'))")) == []


def test_norms_kept_in_eval_only_when_the_flag_is_on_by_default() -> None:
    assert _findings(_backbone("BasicBlock(4, 4)", norm_eval="True")) == []


def test_norms_left_training_when_the_eval_flag_is_off_by_default() -> None:
    local = _backbone("nn.BatchNorm2d(4)").replace("from mmdet.models.backbones.resnet import BasicBlock, Bottleneck\n", "")
    assert _findings(local) == [26]
    assert _findings(local.replace("norm_eval=False", "norm_eval=True")) == []


def test_the_path_names_the_norm_and_never_the_training_flag() -> None:
    source = """
    import torch.utils.checkpoint as cp
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_name = "bn1"
            self.add_module(self.norm_name, nn.BatchNorm2d(4))

        @property
        def norm1(self):
            return getattr(self, self.norm_name)

        def forward(self, x):
            def _inner_forward(x):
                if self.training:
                    x = x * 2
                return [self.norm1(b) for b in x]

            return cp.checkpoint(_inner_forward, x)
    """
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for("EMA101")])
    assert [d.message for d in result.diagnostics] == [
        "`_inner_forward` → `Block.norm1` updates running stats twice under `checkpoint`"
    ]
