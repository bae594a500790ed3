"""What the analyses know about torch and the code people write around it, in one table.

Plain data with no libcst or torch import, so the phase-1 summariser (stdlib `ast`) and the
libcst analyses read the same names.
"""

from __future__ import annotations

import re

# Tensor methods that write their receiver.
IN_PLACE_METHODS = frozenset({"mul_", "add_", "sub_", "lerp_", "copy_", "addcmul_", "div_", "set_"})
# Calls that change a tensor's placement or type, not its value.
TRANSFER_METHODS = frozenset(
    {"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "type", "type_as", "detach", "clone", "contiguous"}
)
# Out-of-place arithmetic that can spell an EMA step (`torch.lerp(a, b, w)`, `a.mul(d)`).
ARITHMETIC_CALLS = frozenset({"lerp", "mul", "add", "sub", "div", "addcmul", "lerp_", "mul_", "add_", "sub_", "div_"})
# A per-tensor EMA helper is recognised by its name: these are the words such helpers use.
EMA_HELPER_WORDS = ("lerp", "ema", "avg", "average", "momentum", "update", "accumulate", "interp", "polyak", "blend")
# Words that name a running average itself (a part of its object's or method's name), not
# any update.
AVERAGE_WORDS = frozenset({"ema", "avg", "average", "averager", "momentum", "polyak", "swa", "shadow", "moving"})
# Names an optimizer or a gradient step reads; a model EMA never does.
GRADIENT_NAMES = frozenset({"grad", "grads", "gradient", "gradients", "d_p", "param_groups"})
# Contexts and decorators that turn gradient recording off (`torch.set_grad_enabled(False)` too).
GRAD_OFF_CONTEXTS = frozenset({"no_grad", "inference_mode"})
# Calls whose result holds no autograd history, whatever their input: numbers, lists, arrays.
HISTORY_CUTTING_METHODS = frozenset({"item", "tolist", "numpy", "detach"})
SCALAR_CASTS = frozenset({"float", "int", "bool", "str", "len", "round"})
# torch functions whose result never carries a graph: `clip_grad_norm_` measures gradients
# under `no_grad`, `from_numpy` wraps an array, the others report memory or learning rates.
NO_GRAPH_CALLS = frozenset(
    {
        "clip_grad_norm_",
        "clip_grad_value_",
        "from_numpy",
        # `torch.onnx.operators.shape_as_tensor(x)`: the sizes, as an integer tensor
        "shape_as_tensor",
        "get_lr",
        "get_last_lr",
        "memory_allocated",
        "max_memory_allocated",
    }
)
# `for name, p in model.named_parameters()`: the first element of each item is a name.
NAMED_ITEMS = frozenset({"named_parameters", "named_buffers", "named_modules", "named_children", "items"})
# Tensor methods that return sizes and counts.
SHAPE_METHODS = frozenset({"numel", "nelement", "size", "dim", "ndimension", "element_size"})
# Names about autograd's mode, not a gradient (`if p.requires_grad:`).
GRAD_MODE_NAMES = frozenset({"requires_grad", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"})

# OpenMMLab builds its norm layers from config dicts: `build_norm_layer(cfg, channels)`
# returns `(name, layer)` and `ConvModule(..., norm_cfg=cfg)` holds one; vendored copies of
# mmcv keep the names. The layer has running statistics when `cfg["type"]` is one of these.
OPENMMLAB_NORM_FACTORY = "build_norm_layer"
OPENMMLAB_CONV_MODULES = frozenset({"ConvModule", "DepthwiseSeparableConvModule"})
# `ConvModule(in, out, kernel, stride, padding, dilation, groups, bias, conv_cfg, norm_cfg)`
OPENMMLAB_NORM_CFG_POSITION = 9
# ResNet blocks every OpenMMLab codebase exports (`from mmdet.models.backbones.resnet import
# BasicBlock`): built with `norm_cfg=dict(type='BN')` unless given another config.
OPENMMLAB_PACKAGES = frozenset(
    {"mmcls", "mmpretrain", "mmdet", "mmdet3d", "mmseg", "mmpose", "mmaction", "mmrotate", "mmtrack", "mmocr", "mmselfsup"}
)
OPENMMLAB_BN_BLOCKS = frozenset({"BasicBlock", "Bottleneck"})
BATCH_NORM_CONFIG_TYPES = frozenset(
    {"BN", "BN1d", "BN2d", "BN3d", "SyncBN", "MMSyncBN", "NaiveSyncBN", "NaiveSyncBatchNorm", "TorchSyncBN"}
)

# Hugging Face: a call of a `GradientCheckpointingLayer` subclass instance is checkpointed
# once `model.gradient_checkpointing_enable()` is called; older models call the layer
# through `self._gradient_checkpointing_func(layer.__call__, ...)` instead.
HF_CHECKPOINTING_LAYER = "GradientCheckpointingLayer"
HF_CHECKPOINTING_FUNC = "_gradient_checkpointing_func"

# Libraries whose results are NumPy arrays or Python numbers, never tensors with a graph.
NUMERIC_LIBRARIES = frozenset(
    {"numpy", "sklearn", "scipy", "pandas", "math", "statistics", "random", "time", "timeit"}
    # the standard library's paths, text and files: strings and plain data
    | {"os", "json", "re", "glob", "shutil", "pathlib", "datetime", "string", "socket", "platform"}
)
# Other deep-learning frameworks: a file that imports one of them and not torch holds no
# torch autograd state at all.
OTHER_FRAMEWORKS = frozenset({"mxnet", "tensorflow", "jax", "flax", "paddle", "oneflow", "mindspore", "keras"})

# Calls that read a configuration, with or without arguments: their results are settings.
CONFIGURATION_CALLS = frozenset({"parse_args", "parse_known_args", "get_args", "get_config", "load_config"})

# `nn.Module` methods no tensor has: a name they are called on holds a module
MODULE_ONLY_METHODS = frozenset(
    {"train", "eval", "parameters", "named_parameters", "modules", "named_modules", "children", "state_dict", "load_state_dict", "zero_grad"}
)

# torch functions and methods that return a (values, indices) pair when given a dimension:
# the second element holds integer positions, which carry no autograd history
VALUES_AND_INDICES = frozenset(
    {"max", "min", "sort", "topk", "kthvalue", "mode", "median", "nanmedian", "cummax", "cummin"}
)

# Meters of libraries that keep what their method is given (`self.sum += val * n`, a history
# list), by class and method: the arguments (position, name) that are kept. Classes in the
# checked tree are read from source instead. torchmetrics and Lightning's `log` are absent:
# they run or store with gradients off.
LIBRARY_ACCUMULATORS = {
    "timm.utils.AverageMeter": {"update": ("0", "val")},
    "timm.utils.metrics.AverageMeter": {"update": ("0", "val")},
    "torchnet.meter.AverageValueMeter": {"add": ("0", "value")},
    "torchnet.meter.averagevaluemeter.AverageValueMeter": {"add": ("0", "value")},
    "fvcore.common.history_buffer.HistoryBuffer": {"update": ("0", "value")},
}

# Methods a framework calls once per training step: Lightning's `training_step`, the
# `train_step` of custom trainers (and Keras-style ones), Hugging Face Trainer's `compute_loss`.
# State an instance keeps across their calls outlives the step.
STEP_HOOKS = frozenset({"training_step", "train_step", "compute_loss"})

# What `nn.Module.__init__` sets on every module: never a child added under a computed name.
MODULE_OWN_ATTRIBUTES = frozenset({"training", "_modules", "_parameters", "_buffers"})

# Names under which trainers hand numbers to a logger beside the loss (`loss, log_vars =
# ...`), name metrics and counts, and name gradient norms (measured from `.grad`): values so
# named hold no autograd history by convention.
LOGGING_NAME = re.compile(r"logs?|log_dict|log_vars|logging_outputs?|metrics?|infos?|stats|extras?")
# evaluation metrics that no one differentiates (`eer` from scipy, `bleu`, `auc`): numbers
METRIC_NAME = re.compile(
    r"(\w+_)?([a-z]{0,2}acc\w*|correct\w*|top\d+\w*|precision|recall|f1\w*|masks?|n|counts?|ntokens|tokens"
    r"|eer|auc\w*|bleu\w*|[wc]er|ndcg\w*|mrr|hits\w*)"
)
# libraries whose functions return arrays or plain numbers, never the torch tensor they were
# given (NumPy refuses a tensor that requires grad); not `random` or `statistics`, whose
# `choice` and `median` hand back one of their arguments
ARRAY_LIBRARIES = frozenset({"numpy", "sklearn", "scipy", "pandas", "math"})
# what an optimizer (or the AMP scaler that steps one) is called: `optimizer`, `self.optim`,
# `opt_d`, `scaler`; searched in the lower-cased last name of the value
OPTIMIZER_NAME = re.compile(r"optim|(^|_)opt(_|$|\d)|scaler")
GRADIENT_NORM_NAME = re.compile(r"(\w+_)?(grad_?norms?|gnorm)")

# Methods whose tensor arguments are the model's inputs during a training step.
FORWARD_METHODS = frozenset({"forward", "__call__", "training_step", "compute_loss", "_forward"})
# `numel()`, `.shape` and friends describe a tensor; they are plain numbers, never graph nodes.
CUT_METHODS = frozenset(
    {
        "detach",
        "detach_",
        "item",
        "tolist",
        "numpy",
        "numel",
        "size",
        "dim",
        "is_floating_point",
        "argmax",
        "argmin",
        "get_lr",
        "get_last_lr",
        "asscalar",
        "asnumpy",
        # fresh tensors that share only a dtype and device with their argument
        "new_tensor",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "randn_like",
        "rand_like",
    }
)
CUT_ATTRIBUTES = frozenset({"data", "grad", "shape", "ndim", "dtype", "device", "indices"})
# Element kinds of collections an EMA loop iterates over.
PARAMETER_SOURCES = frozenset({"parameters", "named_parameters"})
DETACHED_SOURCES = frozenset({"buffers", "named_buffers", "state_dict"})
TENSOR_COLLECTIONS = PARAMETER_SOURCES | DETACHED_SOURCES
# Reads of a value that never enter a differentiable computation.
LOGGING_CALLS = frozenset({"print", "log", "info", "debug", "warning", "add_scalar", "format", "append"})


SCALAR_TYPES = frozenset({"int", "float", "bool", "str", "complex"})


# Calls that move or retype a tensor; they keep whatever history it had and add none of
# their own parameters'.
RETYPING_METHODS = frozenset({"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "long", "int", "contiguous"})


# Helpers named for what they return: NumPy arrays or plain numbers (`move_to_np`, `to_numpy`,
# `tensors_to_scalars`), never a tensor with history
NUMBER_CONVERTER = re.compile(r"(^|_)(np|numpy|scalars?)$")
# libraries whose functions convert a tensor argument to a NumPy array, which raises for one
# that requires grad
NUMPY_CONVERTING = frozenset({"numpy", "scipy", "sklearn", "pandas"})
# NumPy ufuncs that convert their argument (not `np.ndim` or `np.shape`, which only read it)
CONVERTING_UFUNCS = frozenset({"isnan", "isinf", "isfinite", "isneginf", "isposinf"})
# helpers that set `requires_grad` on a module's parameters from their second argument
REQUIRES_GRAD_HELPER = re.compile(r"(set_|toggle_)?requires_grads?(_to)?|toggle_grads?")
# Builtins that hand back the objects they are given (or containers of them).
PASS_THROUGH_CALLS = frozenset({"list", "tuple", "dict", "set", "sorted", "reversed", "min", "max", "next", "iter", "getattr"})
# Reinforcement-learning environments (Gym, Gymnasium, vectorised wrappers) and their methods
# that run the simulator.
ENVIRONMENT_NAME = re.compile(r"(\w+_)?(env|envs|environment|environments)")
ENVIRONMENT_METHODS = frozenset({"step", "reset"})
# Methods that empty a container or a rollout buffer (`buffer.clear()`, `memory.clear_memory()`).
EMPTYING_METHOD = re.compile(r"(clear|reset|empty|flush)(_\w+)?")
# Parameters of a loss's `forward` that hold the ground truth, which is data.
TARGET_NAME = re.compile(r"(\w+_)?(targets?|labels?|gts?|ground_truths?|y_true)")
# `torch.tensor([a, b])` copies values into a new leaf, whatever history they had (torch's own
# constructors only: another object's `tensor(...)` method may hand back its argument).
TENSOR_CONSTRUCTORS = frozenset({"torch.tensor", "torch.Tensor", "torch.FloatTensor", "torch.LongTensor"})
