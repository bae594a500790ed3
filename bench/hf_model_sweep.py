"""`check_model` and `transform` on every Hugging Face transformers model that has running
statistics and supports gradient checkpointing, against an independent counter.

    .venv/bin/python bench/hf_model_sweep.py [--families mobilevit wav2vec2_conformer ...]

Each model class (`*Model`, `*Backbone`, `*Encoder` of a `modeling_*.py` that mentions
BatchNorm) is built from its default config shrunk to a few small layers, with random weights
(nothing is downloaded). Ground truth: one training step with `gradient_checkpointing_enable()`
against the same step on an un-checkpointed copy; a module is doubled when its
`num_batches_tracked` moved by a different count. `check_model` runs without inputs (the
parts that trace and the layers' checkpointing flags); `transform`'s model must then count
like the reference. Ends with precision and recall over all models. Imports transformers
through the test-only torchvision shim in tests/vision_models.py.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import vision_models  # noqa: E402,F401  (defines the torchvision ops transformers imports)
import transformers  # noqa: E402

import ema_lint  # noqa: E402

SMALL = dict(
    num_hidden_layers=2, hidden_size=32, intermediate_size=37, num_attention_heads=2, encoder_layers=2,
    decoder_layers=2, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
    decoder_ffn_dim=37, num_queries=5, image_size=64,
)


def _classes(family: str) -> list[type]:
    folder = Path(transformers.__file__).parent / "models" / family
    found = []
    for source in sorted(folder.glob("modeling_*.py")):
        if "BatchNorm" not in source.read_text(encoding="utf-8"):
            continue
        try:
            module = importlib.import_module(f"transformers.models.{family}.{source.stem}")
        except Exception as error:  # a family whose optional dependency is missing
            print(f"{family}: import failed ({type(error).__name__})")
            continue
        for name, cls in vars(module).items():
            if (
                inspect.isclass(cls)
                and cls.__module__ == module.__name__
                and issubclass(cls, transformers.PreTrainedModel)
                and name.endswith(("Model", "Backbone", "Encoder"))
                and not name.endswith("PreTrainedModel")
            ):
                found.append(cls)
    return found


# Configs that stay large after shrinking (big vocabularies, fixed-width backbones) are skipped:
# measured on meta tensors first, so an oversized model never takes real memory.
MAX_PARAMETERS = 30_000_000


def _build(cls: type) -> torch.nn.Module | None:
    config = cls.config_class()
    for key, value in SMALL.items():
        if isinstance(getattr(config, key, None), int):
            try:
                setattr(config, key, value)
            except Exception:  # a derived property without a setter
                pass
    with torch.device("meta"):
        size = sum(p.numel() for p in cls(config).parameters())
    if size > MAX_PARAMETERS:
        return None
    torch.manual_seed(0)
    return cls(config)


def _inputs(config) -> list[dict[str, torch.Tensor]]:
    channels = getattr(config, "num_channels", 3)
    mel_bins = getattr(config, "num_mel_bins", 80)
    return [
        {"pixel_values": torch.randn(2, channels if isinstance(channels, int) else 3, 64, 64)},
        {"input_values": torch.randn(2, 4000)},
        {"input_features": torch.randn(2, 50, mel_bins if isinstance(mel_bins, int) else 80)},
        {"input_ids": torch.randint(0, 50, (2, 12))},
    ]


def _counts(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    before = {n: int(b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}
    leaves = [t for t in tree_leaves(model(**inputs)) if isinstance(t, torch.Tensor) and t.requires_grad]
    sum(t.float().sum() for t in leaves if t.is_floating_point()).backward()
    return {n: int(b) - before[n] for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}


def _doubled(checkpointed: torch.nn.Module, reference: torch.nn.Module) -> tuple[set[str], dict] | None:
    for inputs in _inputs(checkpointed.config):
        try:
            moved = _counts(copy.deepcopy(checkpointed), inputs)
            expected = _counts(copy.deepcopy(reference), inputs)
        except Exception:  # the wrong kind of input for this model
            continue
        return {n.rpartition(".")[0] for n in moved if moved[n] != expected[n]}, inputs
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", help="transformers model folders (default: every one)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    root = Path(transformers.__file__).parent / "models"
    families = args.families or sorted(p.name for p in root.iterdir() if p.is_dir())
    totals = {"doubled": 0, "reported": 0, "true": 0, "models": 0, "exact": 0}
    print(f"{'model':<44} {'doubled':>7} {'found':>5} {'false':>5} {'missed':>6} {'check s':>7} transform")
    for family in families:
        for cls in _classes(family):
            try:
                model = _build(cls)
            except Exception as error:
                print(f"{cls.__name__:<44} build failed ({type(error).__name__})")
                continue
            if model is None:
                print(f"{cls.__name__:<44} over {MAX_PARAMETERS:,} parameters when shrunk, skipped")
                continue
            if not model.supports_gradient_checkpointing or not any(
                n.endswith("num_batches_tracked") for n, _ in model.named_buffers()
            ):
                continue
            reference = copy.deepcopy(model).train()
            try:
                model.gradient_checkpointing_enable()
            except ValueError:  # a class that declares support its layers lack
                print(f"{cls.__name__:<44} refuses gradient_checkpointing_enable()")
                continue
            model.train()
            truth = _doubled(model, reference)
            if truth is None:
                print(f"{cls.__name__:<44} no input ran")
                continue
            doubled, inputs = truth
            started = time.perf_counter()
            found = {d.module for d in ema_lint.check_model(model) if d.code == "EMA101"}
            seconds = time.perf_counter() - started
            fixed = ema_lint.transform(model).model
            exact = _counts(copy.deepcopy(fixed), inputs) == _counts(copy.deepcopy(reference), inputs)
            totals["models"] += 1
            totals["doubled"] += len(doubled)
            totals["reported"] += len(found)
            totals["true"] += len(found & doubled)
            totals["exact"] += exact
            print(
                f"{cls.__name__:<44} {len(doubled):>7} {len(found):>5} {len(found - doubled):>5} "
                f"{len(doubled - found):>6} {seconds:>7.2f} {'counts like the reference' if exact else 'DIFFERS'}"
            )
    precision = totals["true"] / totals["reported"] if totals["reported"] else 1.0
    recall = totals["true"] / totals["doubled"] if totals["doubled"] else 1.0
    print(
        f"\n{totals['models']} models: {totals['doubled']} doubled modules, {totals['reported']} reported, "
        f"precision {precision:.2f}, recall {recall:.2f}; transform counts like the reference on "
        f"{totals['exact']}/{totals['models']}"
    )


if __name__ == "__main__":
    main()
