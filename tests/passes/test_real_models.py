"""check_model, audit and transform on real models from timm and torchvision (pretrained=False).

Each case names the modules its checkpointing recomputes, derived from the model's structure
rather than from ema-lint's output. The graph analysis must find exactly those, the audit's
real steps must agree (precision = recall = 1.00), and one training step of the transformed
model must equal an un-checkpointed copy bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from vision_models import timm, torchvision

import ema_lint
from ema_lint.model import default_step
from ema_lint.runtime.running_stats import is_converted, is_running_stat_module

WRAPPED = "._checkpoint_wrapped_module"


@dataclass
class Case:
    build: Callable[[], tuple[torch.nn.Module, torch.nn.Module]]  # (checkpointed, reference)
    recomputed: Callable[[str], bool]  # which running-stat module names a checkpoint recomputes


def _timm(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    reference = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    return model, reference


def _torchvision_densenet() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(memory_efficient=True, num_classes=10)
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if hasattr(module, "memory_efficient"):
            module.memory_efficient = False
    return model, reference


def _wrapped_resnet18() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    model = copy.deepcopy(reference)
    block = torchvision.models.resnet.BasicBlock
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, block))
    return model, reference


def _plain_resnet18() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return model, copy.deepcopy(model)


def _dense_norm1(name: str) -> bool:
    return ".denselayer" in name and name.endswith(".norm1")


CASES = {
    "torchvision-densenet121-memory-efficient": Case(_torchvision_densenet, _dense_norm1),
    "timm-resnet50": Case(lambda: _timm("resnet50"), lambda n: n.startswith("layer")),
    "timm-efficientnet_b0": Case(lambda: _timm("efficientnet_b0"), lambda n: n.startswith("blocks.")),
    "timm-densenet121": Case(lambda: _timm("densenet121"), _dense_norm1),
    "apply_activation_checkpointing-resnet18": Case(_wrapped_resnet18, lambda n: n.startswith("layer")),
    "torchvision-resnet18-no-checkpointing": Case(_plain_resnet18, lambda n: False),
}

INPUTS = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)


def _expected(model: torch.nn.Module, recomputed: Callable[[str], bool]) -> set[tuple[str, str]]:
    return {
        ("EMA101", name)
        for name, module in model.named_modules()
        if is_running_stat_module(module) and recomputed(name)
    }


def _found(diagnostics) -> set[tuple[str, str]]:
    return {(d.code, d.module) for d in diagnostics}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    spec = CASES[request.param]
    model, reference = spec.build()
    return model.train(), reference.train(), _expected(model, spec.recomputed)


def test_graph_analysis_finds_exactly_the_recomputed_running_stat_modules(case):
    model, _, expected = case
    state = copy.deepcopy(model.state_dict())
    diagnostics = ema_lint.check_model(model)
    assert _found(diagnostics) == expected
    assert all(d.path.endswith(".py") and d.start.line > 1 for d in diagnostics)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "check_model changed the model"


def test_audit_ground_truth_agrees_with_graph_analysis(case):
    model, _, expected = case
    ground_truth = _found(ema_lint.audit(copy.deepcopy(model), default_step(INPUTS), steps=2))
    predicted = _found(ema_lint.check_model(model))
    true_positives = len(predicted & ground_truth)
    precision = true_positives / len(predicted) if predicted else 1.0
    recall = true_positives / len(ground_truth) if ground_truth else 1.0
    assert (precision, recall) == (1.0, 1.0)
    assert ground_truth == expected


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name.replace(WRAPPED, ""): b for name, b in model.named_buffers()}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name.replace(WRAPPED, ""): p.grad for name, p in model.named_parameters()}


def test_transformed_training_step_equals_unchecked_reference_bit_for_bit(case):
    model, reference, expected = case
    result = ema_lint.transform(model)
    assert result.model is not model
    assert result.modified == bool(expected)
    assert not any(is_converted(m) for m in model.modules()), "transform changed the caller's model"
    transformed = result.model
    reference = copy.deepcopy(reference)
    outputs = []
    for net in (transformed, reference):
        x = INPUTS[0].clone().requires_grad_()
        out = net(x)
        out.sum().backward()
        outputs.append((out, x.grad))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])
    grads, reference_grads = _grads(transformed), _grads(reference)
    assert grads.keys() == reference_grads.keys()
    assert all(torch.equal(grads[k], reference_grads[k]) for k in grads)
    buffers, reference_buffers = _buffers(transformed), _buffers(reference)
    assert buffers.keys() == reference_buffers.keys()
    assert all(torch.equal(buffers[k], reference_buffers[k]) for k in buffers)
    assert any(k.endswith("num_batches_tracked") for k in buffers)


def test_untransformed_checkpointed_step_differs_where_expected(case):
    """The hazard is real: without transform, exactly the expected modules count two batches."""
    model, _, expected = case
    net = copy.deepcopy(model)
    default_step(INPUTS)(net)
    twice = {
        ("EMA101", name)
        for name, module in net.named_modules()
        if is_running_stat_module(module) and int(module.num_batches_tracked) == 2
    }
    assert twice == expected
