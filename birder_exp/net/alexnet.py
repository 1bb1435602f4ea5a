"""AlexNet ("ImageNet Classification with Deep Convolutional Neural Networks", NeurIPS 2012), in the simplified
single-tower form Birder registers (as torchvision's): five convolutions, then a two-layer 4096-wide MLP.

The MLP is the ``features`` head, so the embedding is its 4096-dim output and the classifier a single linear.
"""

from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.net.base import BaseNet
from birder_exp.net.squeezenet import reject_config


def _conv_relu(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=(kernel, kernel),
            stride=(stride, stride),
            padding=(padding, padding),
        ),
        nn.ReLU(inplace=True),
    ]


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(0, 0))


class AlexNet(BaseNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        reject_config(self)

        self.body = nn.Sequential(
            *_conv_relu(self.input_channels, 64, 11, 4, 2),
            _pool(),
            *_conv_relu(64, 192, 5, 1, 2),
            _pool(),
            *_conv_relu(192, 384, 3, 1, 1),
            *_conv_relu(384, 256, 3, 1, 1),
            *_conv_relu(256, 256, 3, 1, 1),
            _pool(),
            nn.AdaptiveAvgPool2d(output_size=(6, 6)),
        )
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.Flatten(1),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
        )
        self.embedding_size = 4096
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.feature_dim = 256

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.features(features)  # type: ignore[no-any-return]
