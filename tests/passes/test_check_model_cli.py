from __future__ import annotations

import sys
import textwrap

from click.testing import CliRunner

from ema_lint.check_model_cli import check_model_command


def _factory(tmp_path, monkeypatch, body: str) -> None:
    (tmp_path / "user_models.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_models", None)


MODEL = """
import torch
from torch.utils.checkpoint import checkpoint

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return checkpoint(self.norm, x, use_reentrant=False)

def checkpointed():
    return Net()

def plain():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
"""


def test_findings_exit_1_with_one_line_each(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:checkpointed"])
    assert result.exit_code == 1
    # A finding is located where the user's code builds the module it names.
    built = MODEL.splitlines().index("        self.norm = torch.nn.BatchNorm1d(4)") + 1
    assert result.output == (
        f"{tmp_path / 'user_models.py'}:{built}:1: EMA101 [norm] `norm` (BatchNorm1d) updates its running "
        "statistics again when checkpoint recomputes it in backward\n"
    )


def test_clean_model_exits_0(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:plain"])
    assert (result.exit_code, result.output) == (0, "")


def test_unimportable_factory_exits_2(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:missing"])
    assert result.exit_code == 2
    assert "cannot build the model from `user_models:missing`: AttributeError" in result.output
