"""VoVNet v2 / ESE-VoVNet ("CenterMask: Real-Time Anchor-Free Instance Segmentation",
https://arxiv.org/abs/1911.06667), as Birder lays it out.

v1's one-shot aggregation plus, as in Birder, an identity residual on every block but a stage's first and effective
squeeze-excitation (one 1x1 conv, hard sigmoid) on a stage's last block only.
"""

from typing import Any
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.net.vovnet_v1 import VoVNetBase
from birder_exp.net.vovnet_v1 import osa_concat_conv
from birder_exp.net.vovnet_v1 import osa_convs


class EffectiveSE(nn.Module):
    """Squeeze-excitation with a single full-width 1x1 conv (no reduction) and a hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class OSABlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        layers_per_block: int,
        residual: bool,
        use_ese: bool,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.mid_convs = osa_convs(in_channels, mid_channels, layers_per_block)
        self.concat_conv = osa_concat_conv(in_channels, mid_channels, out_channels, layers_per_block)
        self.ese: nn.Module = EffectiveSE(out_channels) if use_ese is True else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        out = x
        for conv in self.mid_convs:
            out = conv(out)
            features.append(out)

        out = self.ese(self.concat_conv(torch.concat(features, dim=1)))
        if self.residual is True:
            out = out + x

        return out  # type: ignore[no-any-return]


class VoVNet_v2(VoVNetBase):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def make_block(
        self, in_channels: int, mid_channels: int, out_channels: int, layers_per_block: int, index: int, depth: int
    ) -> nn.Module:
        return OSABlock(
            in_channels,
            mid_channels,
            out_channels,
            layers_per_block,
            residual=index > 0,
            use_ese=index == depth - 1,
        )
