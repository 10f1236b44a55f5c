"""Read a customer checkpoint in any of the shapes real CheXNet checkpoints come in and return
a torchvision densenet121 state_dict:

- a bare state_dict, or one under ``state_dict`` / ``model``;
- ``module.`` prefixes (DataParallel) and a ``densenet121.`` wrapper prefix (arnoweng/CheXNet);
- legacy torchvision names (``norm.1`` → ``norm1``, ``conv.2`` → ``conv2``);
- ``classifier.0.`` (the Linear inside a Sequential).
"""

import re

import torch

from chexnet.errors import BundleError

_WRAPPER_PREFIXES = ("module.", "densenet121.", "model.")
# torchvision's own rule for checkpoints saved before 0.3 (denselayer norm.1 / relu.1 / conv.1).
_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a checkpoint is data, never code to execute.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BundleError(f"Checkpoint {path} does not exist.") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, zipfile errors...
        raise BundleError(
            f"Checkpoint {path} is not a loadable PyTorch state_dict ({type(exc).__name__}: {exc})."
        ) from None
    return normalise_state_dict(_unwrap(obj, path))


def _unwrap(obj, path: str) -> dict:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"Checkpoint {path} holds no tensors under the top level, 'state_dict' or 'model'.")
    return obj


def normalise_key(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    key = _LEGACY.sub(lambda m: m.group(1) + m.group(2), key)
    return key.replace("classifier.0.", "classifier.", 1) if key.startswith("classifier.0.") else key


def normalise_state_dict(state: dict) -> dict[str, torch.Tensor]:
    out = {normalise_key(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "classifier.weight" not in out:
        raise BundleError(
            "The checkpoint has no classifier weight (expected 'classifier.weight' or 'classifier.0.weight')."
        )
    return out
