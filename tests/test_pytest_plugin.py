"""The `ema_lint_model_check` fixture, in user test suites run by pytester.

The plugin is not passed with `-p`: the inner sessions load it through the `pytest11`
entry point, as a user's pytest does. They run in subprocesses: pytester's in-process mode
re-imports modules between runs, which torch's operator registry refuses.
"""

from __future__ import annotations

import textwrap

import pytest

MODELS = '''
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ema_lint.runtime


class CheckpointedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = checkpoint(self.block, self.stem(x), use_reentrant=False)
        return self.head(x.mean((2, 3)))


class Smoothed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("average", torch.zeros(3))

    def forward(self, x):
        y = self.lin(x)
        self.average = 0.9 * self.average + 0.1 * y.mean(0)
        return y - self.average


IMAGES = (torch.randn(2, 3, 8, 8),)
'''


@pytest.fixture
def user_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(models=MODELS)
    return pytester


def _built_at(file: str, source: str, assignment: str) -> str:
    """Where a finding on a module points: the line that builds it (pytester strips the
    leading blank line)."""
    line = next(i for i, text in enumerate(textwrap.dedent(source).strip("\n").splitlines(), 1) if assignment in text)
    return f"{file}:{line}"


def _failure_message(result: pytest.RunResult) -> list[str]:
    """The lines of the single failure's message, between pytest's section rules."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if line.startswith("ema-lint found"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("="))
    return lines[start:end]


def test_batchnorm_in_checkpoint_fails_with_module_path_and_fix(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(
        test_user=textwrap.dedent(
            """
            from models import IMAGES, CheckpointedNet

            def test_model(ema_lint_model_check):
                ema_lint_model_check(CheckpointedNet(), IMAGES)
            """
        )
    )
    result = user_suite.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    assert _failure_message(result) == [
        "ema-lint found 1 running-stat or autograd-history hazard in `CheckpointedNet`:",
        "",
        f"EMA101 batchnorm-in-checkpoint at `block.1` ({_built_at('models.py', MODELS, 'self.block =')})",
        "  `block.1` (BatchNorm2d) updates its running statistics again when checkpoint recomputes it in backward",
        "  `block.1` (BatchNorm2d) counted 4 batches over 2 training forwards in 2 steps"
        " and updated its running statistics during backward",
        "  fix: Make running-stat modules update once per step with `ema_lint.transform`",
    ]


def test_converted_model_passes_and_is_left_unchanged(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(
        test_user=textwrap.dedent(
            """
            import torch
            import ema_lint.runtime
            from models import IMAGES, CheckpointedNet

            def test_model(ema_lint_model_check):
                model = ema_lint.runtime.convert_running_stats(CheckpointedNet())
                before = {k: v.clone() for k, v in model.state_dict().items()}
                assert ema_lint_model_check(model, IMAGES) == []
                after = model.state_dict()
                assert before.keys() == after.keys()
                assert all(torch.equal(before[k], after[k]) for k in before)
            """
        )
    )
    user_suite.runpytest_subprocess().assert_outcomes(passed=1)


def test_history_kept_by_buffer_update_fails(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(
        test_user=textwrap.dedent(
            """
            import torch
            from models import Smoothed

            def test_model(ema_lint_model_check):
                ema_lint_model_check(Smoothed(), (torch.randn(4, 3),))
            """
        )
    )
    result = user_suite.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    line = (user_suite.path / "models.py").read_text().splitlines().index("class Smoothed(nn.Module):") + 1
    assert _failure_message(result) == [
        "ema-lint found 1 running-stat or autograd-history hazard in `Smoothed`:",
        "",
        f"EMA201 ema-update-keeps-graph at `<root>` (models.py:{line})",
        "  `average` of the root `Smoothed` is updated from a value that carries autograd history",
        "  `average` of the root `Smoothed` holds autograd history after a step",
        "  fix: Detach the attribute after each forward",
    ]


BRANCHY = """
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x):
        if x.sum() > -1e9:
            x = checkpoint(self.norm, x, use_reentrant=False)
        return x

def step(model):
    model(torch.randn(4, 3, requires_grad=True)).pow(2).mean().backward()

def test_model(ema_lint_model_check):
    ema_lint_model_check(Branchy(), step=step, steps=3)
"""


def test_custom_step_and_untraceable_model(user_suite: pytest.Pytester) -> None:
    """A model fx cannot trace (data-dependent control flow) is still audited by its steps;
    the fix then comes from the analysis' standard fix for the code."""
    user_suite.makepyfile(test_user=BRANCHY)
    result = user_suite.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    message = _failure_message(result)
    assert message[0] == "ema-lint found 1 running-stat or autograd-history hazard in `Branchy`:"
    assert message[2:] == [
        f"EMA101 batchnorm-in-checkpoint at `norm` ({_built_at('test_user.py', BRANCHY, 'self.norm =')})",
        # read from the untraceable forward's source, then measured by the steps
        "  `norm` (BatchNorm1d) updates its running statistics again when checkpoint recomputes it in backward",
        "  `norm` (BatchNorm1d) counted 6 batches over 3 training forwards in 3 steps"
        " and updated its running statistics during backward",
        "  fix: Make running-stat modules update once per step with `ema_lint.transform`",
    ]


def test_needs_inputs_or_step(user_suite: pytest.Pytester) -> None:
    user_suite.makepyfile(
        test_user=textwrap.dedent(
            """
            import pytest
            from models import CheckpointedNet

            def test_model(ema_lint_model_check):
                with pytest.raises(TypeError, match="needs example_inputs or step="):
                    ema_lint_model_check(CheckpointedNet())
            """
        )
    )
    user_suite.runpytest_subprocess().assert_outcomes(passed=1)
