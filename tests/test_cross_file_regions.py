"""A Hugging Face checkpointing layer defined in one checked file and called in another."""

from __future__ import annotations

from pathlib import Path

from ema_lint.registry import rule_for
from ema_lint.runner import SourceFile, check_files

LAYERS = """\
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class ConvLayer(GradientCheckpointingLayer):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.BatchNorm1d(c)

    def forward(self, x):
        return self.norm(x)
"""

MODEL = """\
from torch import nn
from pkg.layers import ConvLayer


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([ConvLayer(c) for _ in range(2)])
        self.plain = nn.BatchNorm1d(c)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.plain(x)
"""


def test_a_checkpointing_layer_from_another_file_is_a_region(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(LAYERS)
    (package / "model.py").write_text(MODEL)
    files = [SourceFile(str(package / name), str(tmp_path)) for name in ("__init__.py", "layers.py", "model.py")]
    report = check_files(files, [rule_for("EMA101")])
    assert [(Path(d.path).name, d.start.line, d.message) for d in report.diagnostics] == [
        (
            "model.py",
            13,
            "`layer` → `Encoder.layers` → `ConvLayer.norm` updates running stats twice under `gradient checkpointing`",
        )
    ]
