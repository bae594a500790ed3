"""check_model and transform on Hugging Face transformers models built from tiny configs.

None of these models traces as a whole with torch.fx. Ground truth comes from an independent
counter: one training step with `gradient_checkpointing_enable()` against the same step on
an un-checkpointed copy; a running-stat module is doubled when its `num_batches_tracked`
moved by a different count. `check_model` must report exactly those modules, without inputs
(from the parts that trace and the layers' checkpointing flags) and with them (the audit),
whatever the output structure, and `transform` must then train bit for bit like the
un-checkpointed reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy
import pytest
import torch
import vision_models  # noqa: F401  (defines the torchvision ops transformers' image utilities import)
from torch.utils._pytree import tree_leaves

import ema_lint
from ema_lint.runtime.running_stats import is_converted

transformers = pytest.importorskip("transformers")
# What users call still; transformers 5 has renamed it.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")


@dataclass
class Case:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], torch.Tensor]


def _wav2vec2_conformer() -> torch.nn.Module:
    config = transformers.Wav2Vec2ConformerConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(8, 8), conv_kernel=(3, 3), conv_stride=(2, 2),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
    )
    return transformers.Wav2Vec2ConformerModel(config)


def _parakeet() -> torch.nn.Module:
    config = transformers.ParakeetEncoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        num_mel_bins=16, subsampling_conv_channels=8,
    )
    return transformers.ParakeetEncoder(config)


def _mobilevit() -> torch.nn.Module:
    config = transformers.MobileViTConfig(
        image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 32, 32, 64],
        num_attention_heads=2,
    )
    return transformers.MobileViTModel(config)


def _swiftformer() -> torch.nn.Module:
    config = transformers.SwiftFormerConfig(depths=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16])
    return transformers.SwiftFormerModel(config)


def _mobilevitv2() -> torch.nn.Module:
    return transformers.MobileViTV2Model(transformers.MobileViTV2Config(image_size=64, width_multiplier=0.25))


def _seeded(shape: tuple[int, ...]) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(1))


CASES = {
    "wav2vec2-conformer": Case(_wav2vec2_conformer, _seeded((2, 400))),
    "parakeet-encoder": Case(_parakeet, _seeded((2, 40, 16))),
    "mobilevit": Case(_mobilevit, _seeded((2, 3, 32, 32))),
    "swiftformer": Case(_swiftformer, _seeded((2, 3, 32, 32))),
    "mobilevitv2": Case(_mobilevitv2, _seeded((2, 3, 64, 64))),
}


def _step(model: torch.nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    # The same dropout masks, and SpecAugment's (drawn with numpy), in every run compared.
    torch.manual_seed(0)
    numpy.random.seed(0)
    outputs = [leaf for leaf in tree_leaves(model(inputs)) if isinstance(leaf, torch.Tensor)]
    torch.stack([o.float().sum() for o in outputs if o.requires_grad]).sum().backward()
    return outputs


def _batches(model: torch.nn.Module) -> dict[str, int]:
    return {
        name.rpartition(".")[0]: int(buffer)
        for name, buffer in model.named_buffers()
        if name.endswith("num_batches_tracked")
    }


def _doubled(checkpointed: torch.nn.Module, reference: torch.nn.Module, inputs: torch.Tensor) -> set[str]:
    """The independent counter: modules whose batch count one step moved differently."""
    counts = []
    for model in (copy.deepcopy(checkpointed), copy.deepcopy(reference)):
        before = _batches(model)
        _step(model, inputs)
        counts.append({name: count - before[name] for name, count in _batches(model).items()})
    return {name for name in counts[0] if counts[0][name] != counts[1][name]}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, set[str]]:
    spec = CASES[request.param]
    torch.manual_seed(0)
    reference = spec.build().train()
    model = copy.deepcopy(reference)
    model.gradient_checkpointing_enable()
    inputs = spec.inputs()
    doubled = _doubled(model, reference, inputs)
    assert doubled, "the case must have the hazard"
    return model, reference, inputs, doubled


def _reported(diagnostics: list[Any]) -> set[str]:
    return {d.module for d in diagnostics if d.code == "EMA101"}


def test_check_model_without_inputs_finds_exactly_the_doubled_modules(case):
    model, _, _, doubled = case
    state = copy.deepcopy(model.state_dict())
    diagnostics = ema_lint.check_model(model)
    assert _reported(diagnostics) == doubled
    assert {d.code for d in diagnostics} == {"EMA003", "EMA101"}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("return_dict", [True, False])
def test_check_model_with_inputs_finds_exactly_the_doubled_modules(case, return_dict):
    model, _, inputs, doubled = case
    model = copy.deepcopy(model)
    model.config.return_dict = return_dict
    assert not inputs.requires_grad
    assert _reported(ema_lint.check_model(model, (inputs,))) == doubled
    assert not inputs.requires_grad


def test_transformed_model_trains_like_the_unchecked_reference_bit_for_bit(case):
    model, reference, inputs, _ = case
    result = ema_lint.transform(model)
    assert result.modified and result.model is not model
    assert not any(is_converted(m) for m in model.modules()), "transform changed the caller's model"
    reference = copy.deepcopy(reference)
    outputs = _step(result.model, inputs)
    expected = _step(reference, inputs)
    assert len(outputs) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected))
    parameters = dict(reference.named_parameters())
    for name, parameter in result.model.named_parameters():
        assert (parameter.grad is None) == (parameters[name].grad is None), name
        assert parameter.grad is None or torch.equal(parameter.grad, parameters[name].grad), name
    buffers = dict(reference.named_buffers())
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in result.model.named_buffers())
