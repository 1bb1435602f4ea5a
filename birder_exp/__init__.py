"""birder_exp: Birder's model registry as the heart of a Hydra + Lightning toolkit.

Heavy pieces (torch, the weights loader) are imported on first attribute access, so
``import birder_exp`` and registry listings stay fast.
"""

import importlib
from typing import Any

from birder_exp.model_registry import list_pretrained_models
from birder_exp.version import __version__

_LAZY = {
    "load_pretrained_model": "birder_exp.weights",
    "load_model": "birder_exp.weights",
    "save_checkpoint": "birder_exp.weights",
    "download_weights": "birder_exp.weights",
}

__all__ = [
    "__version__",
    "download_weights",
    "list_pretrained_models",
    "load_model",
    "load_pretrained_model",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'birder_exp' has no attribute '{name}'")

    return getattr(importlib.import_module(module), name)
