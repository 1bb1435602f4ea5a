"""HGNet v2 (PP-HGNetV2, https://github.com/PaddlePaddle/PaddleClas/blob/develop/docs/zh_CN/models/ImageNet1k/
PP-HGNetV2.md), as Birder lays it out.

v1's stages (``HGNetBase``) without effective SE (a second 1x1 instead), learnable affines after activations when
the config sets ``use_lab``, and a stem with a two-branch (max-pool / 2x2 convs) aggregation.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.net.hgnet_v1 import Conv2dBNActivation
from birder_exp.net.hgnet_v1 import HGNetBase
from birder_exp.net.hgnet_v1 import pointwise


class Stem(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, use_lab: bool) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> Conv2dBNActivation:
            return Conv2dBNActivation(
                c_in,
                c_out,
                kernel_size=(kernel, kernel),
                stride=(stride, stride),
                padding=(padding, padding),
                groups=1,
                use_act=True,
                use_lab=use_lab,
            )

        self.stem1 = conv(in_channels, mid_channels, 3, 2, 1)
        self.stem2a = conv(mid_channels, mid_channels // 2, 2, 1, 0)
        self.stem2b = conv(mid_channels // 2, mid_channels, 2, 1, 0)
        self.stem3 = conv(mid_channels * 2, mid_channels, 3, 2, 1)
        self.stem4 = pointwise(mid_channels, out_channels, use_act=True, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=(2, 2), stride=(1, 1), padding=(0, 0), ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Right/bottom zero padding keeps the 2x2 ops at the input's size
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        pooled = self.pool(x)
        convolved = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        return self.stem4(self.stem3(torch.concat([pooled, convolved], dim=1)))  # type: ignore[no-any-return]


class HGNet_v2(HGNetBase):
    use_ese: ClassVar[bool] = False

    def required_keys(self) -> tuple[str, ...]:
        return (*super().required_keys(), "use_lab")

    def uses_lab(self) -> bool:
        assert self.config is not None
        return bool(self.config["use_lab"])

    def make_stem(self, stem_channels: list[int], use_lab: bool) -> nn.Module:
        if len(stem_channels) != 2:
            raise ValueError(f"{type(self).__name__}: stem_channels must be [mid, out], got {stem_channels}")

        return Stem(self.input_channels, stem_channels[0], stem_channels[1], use_lab=use_lab)
