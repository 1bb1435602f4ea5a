"""A small family of the tests' own: the registry must work before (and apart from) any built-in family."""

from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.net.base import BaseNet
from birder_exp.net.base import DetectorBackbone


class TinyNet(BaseNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        assert self.config is not None
        width: int = self.config["width"]
        self.stem = nn.Conv2d(input_channels, width, kernel_size=3, padding=1)
        self.embedding_size = width
        self.classifier = self.create_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stem(x))

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))


class TinyBackbone(DetectorBackbone, TinyNet):
    pass
