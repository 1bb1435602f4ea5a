"""Pretrained weights: the catalogue's entries as verified local files, loaded into ready networks.

``download_weights`` and the CLI never import torch; the loading names import it on first access.
"""

import importlib
from typing import Any

from birder_exp.weights.download import download_weights
from birder_exp.weights.download import verify_weights
from birder_exp.weights.errors import CheckpointFormatError
from birder_exp.weights.errors import CheckpointMismatchError
from birder_exp.weights.errors import DownloadError
from birder_exp.weights.errors import NetworkUnavailableError
from birder_exp.weights.errors import UnsupportedFormatError
from birder_exp.weights.errors import VerificationError
from birder_exp.weights.errors import WeightsError

_LAZY = {
    "load_pretrained_model": "birder_exp.weights.loader",
    "load_model": "birder_exp.weights.loader",
    "ModelInfo": "birder_exp.weights.loader",
    "DetectionModelInfo": "birder_exp.weights.loader",
    "save_checkpoint": "birder_exp.weights.checkpoint",
    "read_checkpoint": "birder_exp.weights.checkpoint",
}

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "DetectionModelInfo",
    "DownloadError",
    "ModelInfo",
    "NetworkUnavailableError",
    "UnsupportedFormatError",
    "VerificationError",
    "WeightsError",
    "download_weights",
    "load_model",
    "load_pretrained_model",
    "read_checkpoint",
    "save_checkpoint",
    "verify_weights",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'birder_exp.weights' has no attribute '{name}'")

    return getattr(importlib.import_module(module), name)
