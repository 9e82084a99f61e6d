"""Float8 training (seed 002's torchao Float8): ``train.float8: true``.

torchao's ``convert_to_float8_training`` swaps the model's ``nn.Linear`` layers for ``Float8Linear``
(dynamic per-tensor scaling: the matmuls of forward and backward run in float8 on the tensor cores,
weights and optimizer state stay in their own dtype). It needs a CUDA GPU of compute capability
8.9 or higher (Ada, Hopper, Blackwell) and the ``torchao`` package, which this project does not
install (``pip install torchao``); it is imported only when the option is on.

Which layers convert (:func:`float8_layer_filter`, a pure function of the module and its name):
``nn.Linear`` whose in- and out-features are both multiples of 16 (the float8 matmul's
requirement), except the language-model head (``lm_head``: the logits keep their precision, as
torchtitan does). Everything else (embeddings, norms, routers of other shapes, LoRA adapters of a
small rank) stays as it is.

:func:`check_float8` is the error before any work: no GPU, a GPU below 8.9, or no torchao, each
named with the key (``train.float8``). :func:`convert_to_float8` converts a model in place (after
it is on its device, before data-parallel wrapping and ``torch.compile``) and
:func:`revert_float8` turns the ``Float8Linear`` layers back into plain ``nn.Linear`` sharing the
same parameters, so the trained model saves, evaluates and exports like any other (the state dict
keys never change: checkpoints are the same either way).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: lowest CUDA compute capability with float8 tensor cores (Ada Lovelace; Hopper is 9.0)
MIN_CAPABILITY = (8, 9)
#: float8 matmuls need both dimensions of the weight to be multiples of this
DIM_MULTIPLE = 16
#: layers never converted (matched on the last component of the qualified name)
SKIPPED_NAMES = frozenset({"lm_head"})

INSTALL_HINT = "pip install torchao"


def float8_layer_filter(module: nn.Module, fqn: str) -> bool:
    """True when the layer ``fqn`` (its qualified name in the model) trains in float8: an
    ``nn.Linear`` with both dims multiples of 16 that is not the language-model head."""
    if not isinstance(module, nn.Linear):
        return False
    if fqn.rsplit(".", 1)[-1] in SKIPPED_NAMES:
        return False
    return module.in_features % DIM_MULTIPLE == 0 and module.out_features % DIM_MULTIPLE == 0


def float8_layers(model: nn.Module) -> list[str]:
    """The qualified names of the layers :func:`float8_layer_filter` selects, in module order."""
    return [name for name, module in model.named_modules() if name and float8_layer_filter(module, name)]


def check_float8(device: torch.device | str | None = None, key: str = "train.float8") -> None:
    """Raise ``ValueError`` naming ``key`` unless float8 training can run on ``device`` (None: the
    current CUDA device): a CUDA GPU of compute capability >= 8.9, and torchao importable."""
    if device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"{key}: float8 training needs a CUDA GPU (compute capability >= 8.9); the device is {device}")
    if not torch.cuda.is_available():
        raise ValueError(f"{key}: float8 training needs a CUDA GPU (compute capability >= 8.9); none is available")
    index = torch.device(device).index if device is not None else None
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        raise ValueError(
            f"{key}: float8 training needs compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
            f"(Ada, Hopper or newer); {name} has {major}.{minor}. Set float8: false (bf16 is the fastest choice there)"
        )
    if importlib.util.find_spec("torchao") is None:
        raise ValueError(f"{key}: float8 training needs torchao, which is not installed: {INSTALL_HINT}")


def convert_to_float8(model: nn.Module, key: str = "train.float8") -> list[str]:
    """Convert the selected ``nn.Linear`` layers of ``model`` (already on its GPU) to torchao's
    ``Float8Linear`` in place; returns their names. Checks :func:`check_float8` first."""
    check_float8(_device_of(model), key)
    from torchao.float8 import convert_to_float8_training

    names = float8_layers(model)
    if not names:
        raise ValueError(f"{key}: no Linear layer of the model has dimensions that are multiples of {DIM_MULTIPLE}")
    convert_to_float8_training(model, module_filter_fn=float8_layer_filter)
    log.info("float8 training: %d Linear layer(s) converted (lm_head and layers with dims not / 16 kept)", len(names))
    return names


def revert_float8(model: nn.Module) -> int:
    """Replace every torchao ``Float8Linear`` of ``model`` with a plain ``nn.Linear`` holding the same
    parameters (after training); returns how many were replaced. A model without any is unchanged."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "Float8Linear" or not isinstance(module, nn.Linear):
            continue
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = module.weight
        if module.bias is not None:
            plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
        replaced += 1
    return replaced


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
