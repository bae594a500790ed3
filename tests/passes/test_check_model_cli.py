from __future__ import annotations

import json
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
    result = CliRunner().invoke(check_model_command, ["user_models:checkpointed", "-q"])
    assert result.exit_code == 1
    # A finding is located where the user's code builds the module it names.
    built = MODEL.splitlines().index("        self.norm = torch.nn.BatchNorm1d(4)") + 1
    assert result.output == (
        f"{tmp_path / 'user_models.py'}:{built}:1: EMA101 `norm` (BatchNorm1d) updates its running "
        "statistics again when checkpoint recomputes it in backward\n"
    )


def test_clean_model_exits_0(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:plain", "-q"])
    assert (result.exit_code, result.output) == (0, "")


def test_factory_in_the_current_folder_is_imported(tmp_path, monkeypatch):
    (tmp_path / "local_models.py").write_text(textwrap.dedent(MODEL))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("local_models", None)
    result = CliRunner().invoke(check_model_command, ["local_models:checkpointed", "--output-format", "json"])
    assert result.exit_code == 1
    [finding] = json.loads(result.output)
    assert (finding["code"], finding["filename"]) == ("EMA101", str(tmp_path / "local_models.py"))


def test_eval_mode_has_no_running_statistics_to_double(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:checkpointed", "--eval", "-q"])
    assert (result.exit_code, result.output) == (0, "")


TEACHER = """
import torch

class Teacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.student = torch.nn.Linear(4, 4)
        self.teacher = torch.nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(0.99).add_(s, alpha=0.01)
        return self.student(x)

def build():
    return Teacher()
"""


def test_fail_on_from_the_configuration_decides_the_exit_code(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, TEACHER)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(check_model_command, ["user_models:build", "-q"])
    assert (result.exit_code, result.output.count(": EMA301 ")) == (1, 1)
    (tmp_path / "pyproject.toml").write_text('[tool.ema-lint]\nfail-on = "error"\n')
    result = CliRunner().invoke(check_model_command, ["user_models:build", "-q"])
    assert (result.exit_code, result.output.count(": EMA301 ")) == (0, 1)


UNTRACEABLE = """
import torch
from torch.utils.checkpoint import checkpoint

class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        if x.sum() > -1e9:
            x = checkpoint(self.norm, x, use_reentrant=False)
        return x

def build():
    return Branchy()
"""


def test_input_shapes_let_the_audit_measure_an_untraceable_model(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, UNTRACEABLE)
    result = CliRunner().invoke(check_model_command, ["user_models:build", "--input-shape", "4,3", "-q"])
    assert result.exit_code == 1
    assert "counted 4 batches over 2 training forwards in 2 steps" in result.output
    result = CliRunner().invoke(check_model_command, ["user_models:build", "--input-shape", "4,x"])
    assert result.exit_code == 2 and "comma-separated list of sizes" in result.output


def test_unimportable_factory_exits_2(tmp_path, monkeypatch):
    _factory(tmp_path, monkeypatch, MODEL)
    result = CliRunner().invoke(check_model_command, ["user_models:missing"])
    assert result.exit_code == 2
    assert "cannot build the model from `user_models:missing`: AttributeError" in result.output
