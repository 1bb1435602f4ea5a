"""SqueezeNet v1.1 ("SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
https://arxiv.org/abs/1602.07360), as Birder registers it: one fixed architecture at 227x227.

As in Birder the embedding is the last feature map itself (512 channels, unpooled) and the classifier is
convolutional: dropout, 1x1 convolution, ReLU, then global average pooling.
"""

from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.net.base import BaseNet


class Fire(nn.Module):
    """1x1 squeeze, then two parallel expands (1x1 ``left``, 3x3 ``right``) concatenated on channels."""

    def __init__(self, in_planes: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_planes, squeeze, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.left = nn.Conv2d(squeeze, expand, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.left_activation = nn.ReLU(inplace=True)
        self.right = nn.Conv2d(squeeze, expand, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        self.right_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.concat((self.left_activation(self.left(x)), self.right_activation(self.right(x))), dim=1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(0, 0), ceil_mode=True)


def reject_config(net: BaseNet) -> None:
    """Birder's fixed architectures take no config (nor head options, which live in the config)."""

    if net.config is not None:
        raise ValueError(f"{type(net).__name__} is a fixed architecture and takes no config, got {net.config!r}")


class SqueezeNet(BaseNet):
    default_size = (227, 227)

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

        self.stem = nn.Sequential(
            nn.Conv2d(self.input_channels, 64, kernel_size=(3, 3), stride=(2, 2), padding=(0, 0)),
            nn.ReLU(inplace=True),
            _pool(),
        )
        self.body = nn.Sequential(
            Fire(64, 16, 64),
            Fire(128, 16, 64),
            _pool(),
            Fire(128, 32, 128),
            Fire(256, 32, 128),
            _pool(),
            Fire(256, 48, 192),
            Fire(384, 48, 192),
            Fire(384, 64, 256),
            Fire(512, 64, 256),
        )
        self.embedding_size = 512
        self.classifier = self.create_classifier()

        self.max_stride = 16
        self.stem_stride = 4
        self.stem_width = 64
        self.feature_dim = 512

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))  # type: ignore[no-any-return]

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def create_classifier(
        self, embed_dim: Optional[int] = None, head_bias: Optional[bool] = None, mlp_head: Optional[bool] = None
    ) -> nn.Module:
        if head_bias is not None or mlp_head is not None:
            raise ValueError(
                f"{type(self).__name__} has a fixed convolutional classifier: head_bias and mlp_head must be None, "
                f"got head_bias={head_bias!r}, mlp_head={mlp_head!r}"
            )
        if self.num_classes == 0:
            return nn.Identity()

        if embed_dim is None:
            embed_dim = self.embedding_size

        return nn.Sequential(
            nn.Dropout(p=0.5, inplace=True),
            nn.Conv2d(embed_dim, self.num_classes, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
