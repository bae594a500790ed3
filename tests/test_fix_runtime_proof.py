"""Runtime proof of a fix: the EMA101 call site fixed by `ema-lint fix` gives running
statistics, outputs and gradients equal (zero tolerance) to an un-checkpointed reference,
where the unfixed source counts every batch twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ema_lint.fixer import fix_source
from ema_lint.project import ProjectIndex, summarize
from ema_lint.registry import rule_for

CASE = Path(__file__).resolve().parent.parent / "fixtures" / "EMA101" / "fix_proof_checkpointed_blocks.py"
STEPS = 3


def _load(source: bytes, folder: Path, name: str):
    path = folder / f"{name}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(net: torch.nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    outputs = []
    for batch in batches:
        net.zero_grad()
        output = net(batch)
        output.square().mean().backward()
        outputs.append(output.detach())
    return outputs


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {f"{name}.grad": p.grad for name, p in net.named_parameters()}
    return {**net.state_dict(), **grads}


def _train_all_three(source: bytes, fixed: bytes, folder: Path, stem: str):
    """Train the original without checkpointing (the reference), the original checkpointed
    (broken) and the fixed source checkpointed, from the same weights on the same batches.
    Asserts the fixed one equals the reference bit for bit; returns the reference's and the
    broken one's final state."""
    original = _load(source, folder, f"original_{stem}")
    repaired = _load(fixed, folder, f"fixed_{stem}")
    torch.manual_seed(0)
    reference = original.Net(use_checkpoint=False)
    broken = original.Net(use_checkpoint=True)
    candidate = repaired.Net(use_checkpoint=True)
    broken.load_state_dict(reference.state_dict())
    candidate.load_state_dict(reference.state_dict())
    batches = [torch.randn(4, 4, 6, 6) for _ in range(STEPS)]

    expected_outputs = _train(reference, batches)
    assert all(torch.equal(a, b) for a, b in zip(_train(candidate, batches), expected_outputs, strict=True))
    expected, actual = _state(reference), _state(candidate)
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    _train(broken, batches)
    return expected, _state(broken)


def test_fixed_checkpoint_call_matches_the_uncheckpointed_reference(tmp_path: Path) -> None:
    source = CASE.read_bytes()
    project = ProjectIndex.from_facts([summarize(CASE.stem, source)])
    fixed = fix_source(str(CASE), source, [rule_for("EMA101")], project=project, module_name=CASE.stem)
    assert (dict(fixed.applied), fixed.problem) == ({"EMA101": 1}, None)
    assert b"context_fn=running_stats_context_fn" in fixed.fixed

    expected, broken = _train_all_three(source, fixed.fixed, tmp_path, "model")
    assert int(expected["blocks.0.bn.num_batches_tracked"]) == STEPS
    assert int(broken["blocks.0.bn.num_batches_tracked"]) == 2 * STEPS
    assert not torch.equal(broken["blocks.0.bn.running_var"], expected["blocks.0.bn.running_var"])


SPECTRAL_CASE = CASE.parent.parent / "EMA103" / "fix_proof_spectral_blocks.py"


def test_region_with_batchnorm_and_spectral_norm_fixed_by_both_rules_matches_the_reference(tmp_path: Path) -> None:
    """EMA101 sees the spectral norm in the region too, so both rules add the same
    `context_fn=replay_buffers` (one edit), which restores the power iteration's buffers as well
    as the running statistics; no `running_stats_context_fn` import is left unused."""
    source = SPECTRAL_CASE.read_bytes()
    project = ProjectIndex.from_facts([summarize(SPECTRAL_CASE.stem, source)])
    rules = [rule_for("EMA101"), rule_for("EMA103")]
    fixed = fix_source(str(SPECTRAL_CASE), source, rules, project=project, module_name=SPECTRAL_CASE.stem)
    assert (dict(fixed.applied), fixed.problem) == ({"EMA101": 1, "EMA103": 1}, None)
    assert b"x = checkpoint(block, x, use_reentrant=False, context_fn=replay_buffers)" in fixed.fixed
    assert b"running_stats_context_fn" not in fixed.fixed
    again = fix_source(str(SPECTRAL_CASE), fixed.fixed, rules, project=project, module_name=SPECTRAL_CASE.stem)
    assert again.fixed == fixed.fixed

    expected, broken = _train_all_three(source, fixed.fixed, tmp_path, "spectral")
    drifted = {name for name, value in broken.items() if not torch.equal(value, expected[name])}
    assert {"blocks.0.conv.weight_u", "blocks.0.bn.num_batches_tracked"} <= drifted
