"""HGNet v1 (PP-HGNet, https://github.com/PaddlePaddle/PaddleClas/blob/release/2.5.1/docs/en/models/PP-HGNet_en.md),
as Birder lays it out.

High-performance GPU blocks aggregate a chain of convolutions at once (as VoVNet does), then squeeze with a 1x1 and
either effective SE (v1) or a second 1x1 (v2). ``HGNetBase`` holds what v1 and v2 share: four stages described by
``[in, mid, out, blocks, downsample, light_block, kernel_size, num_layers]``, opened by a strided depthwise conv when
``downsample``, and a head of pooling, a 1x1 conv to 2048 and ReLU (with a learnable affine when ``use_lab``).
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import StagedConvNet

_STAGE_KEYS = ("stage1", "stage2", "stage3", "stage4")
_EMBEDDING_SIZE = 2048


def same_padding(kernel_size: tuple[int, int]) -> tuple[int, int]:
    return ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)


class LearnableAffineBlock(nn.Module):
    """``scale * x + bias`` with two learnable scalars."""

    def __init__(self, scale_value: float, bias_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale_value]))
        self.bias = nn.Parameter(torch.tensor([bias_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias


class Conv2dBNActivation(nn.Module):
    """Conv (no bias), BatchNorm, optional ReLU, optional learnable affine (``conv``/``bn``/``act``/``lab``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int,
        use_act: bool,
        use_lab: bool,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act: nn.Module = nn.ReLU() if use_act is True else nn.Identity()
        self.lab: nn.Module = (
            LearnableAffineBlock(scale_value=1.0, bias_value=0.0) if use_lab is True else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))  # type: ignore[no-any-return]


def pointwise(in_channels: int, out_channels: int, use_act: bool, use_lab: bool) -> Conv2dBNActivation:
    return Conv2dBNActivation(
        in_channels,
        out_channels,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        groups=1,
        use_act=use_act,
        use_lab=use_lab,
    )


class LightConvBNAct(nn.Module):
    """Linear 1x1, then an activated depthwise ``kernel_size`` conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], use_lab: bool) -> None:
        super().__init__()
        self.conv1 = pointwise(in_channels, out_channels, use_act=False, use_lab=False)
        self.conv2 = Conv2dBNActivation(
            out_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=(1, 1),
            padding=same_padding(kernel_size),
            groups=out_channels,
            use_act=True,
            use_lab=use_lab,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))  # type: ignore[no-any-return]


class EseModule(nn.Module):
    """Effective squeeze-excitation: one full-width 1x1 conv on the pooled input, sigmoid gate."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mul(x, self.sigmoid(self.conv(x.mean((2, 3), keepdim=True))))


class Stem(nn.Module):
    """v1's stem: 3x3 conv-BN-ReLUs (the first strided), then 3x3/2 max pooling."""

    def __init__(self, channel_list: list[int]) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *(
                Conv2dBNActivation(
                    channel_list[i],
                    channel_list[i + 1],
                    kernel_size=(3, 3),
                    stride=(2, 2) if i == 0 else (1, 1),
                    padding=(1, 1),
                    groups=1,
                    use_act=True,
                    use_lab=False,
                )
                for i in range(len(channel_list) - 1)
            )
        )
        self.pool = nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))  # type: ignore[no-any-return]


class HighPerfGPUBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        num_layers: int,
        kernel_size: tuple[int, int],
        residual: bool,
        light_block: bool,
        use_lab: bool,
        use_ese: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            layer_in = in_channels if i == 0 else mid_channels
            if light_block is True:
                self.layers.append(LightConvBNAct(layer_in, mid_channels, kernel_size=kernel_size, use_lab=use_lab))
            else:
                self.layers.append(
                    Conv2dBNActivation(
                        layer_in,
                        mid_channels,
                        kernel_size=kernel_size,
                        stride=(1, 1),
                        padding=same_padding(kernel_size),
                        groups=1,
                        use_act=True,
                        use_lab=use_lab,
                    )
                )

        total_channels = in_channels + num_layers * mid_channels
        if use_ese is True:
            self.aggregation = nn.Sequential(
                pointwise(total_channels, out_channels, use_act=True, use_lab=use_lab), EseModule(out_channels)
            )
        else:
            self.aggregation = nn.Sequential(
                pointwise(total_channels, out_channels // 2, use_act=True, use_lab=use_lab),
                pointwise(out_channels // 2, out_channels, use_act=True, use_lab=use_lab),
            )

        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        out = x
        for layer in self.layers:
            out = layer(out)
            features.append(out)

        out = self.aggregation(torch.concat(features, dim=1))
        if self.residual is True:
            out = self.drop_path(out) + x

        return out


class HighPerfGPUStage(nn.Module):
    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        depth: int,
        num_layers: int,
        downsample: bool,
        stride: tuple[int, int],
        kernel_size: tuple[int, int],
        light_block: bool,
        use_lab: bool,
        use_ese: bool,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        if downsample is True:
            self.downsample: nn.Module = Conv2dBNActivation(
                in_channels,
                in_channels,
                kernel_size=(3, 3),
                stride=stride,
                padding=(1, 1),
                groups=in_channels,
                use_act=False,
                use_lab=False,
            )
        else:
            self.downsample = nn.Identity()

        self.blocks = nn.Sequential(
            *(
                HighPerfGPUBlock(
                    in_channels if i == 0 else out_channels,
                    mid_channels,
                    out_channels,
                    num_layers,
                    kernel_size=kernel_size,
                    residual=i > 0,
                    light_block=light_block,
                    use_lab=use_lab,
                    use_ese=use_ese,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class HGNetBase(StagedConvNet):
    """Four high-performance GPU stages and the 2048-wide head; subclasses build the stem (``make_stem``) and say
    whether blocks use effective SE (``use_ese``) and learnable affines (``use_lab``)."""

    block_group_regex = r"body\.stage(\d+)\.blocks\.(\d+)"
    use_ese: ClassVar[bool]

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        cfg = self.require_config(*self.required_keys())
        stem_channels: list[int] = list(cfg["stem_channels"])
        stages_cfg: list[list[Any]] = [list(cfg[key]) for key in _STAGE_KEYS]
        drop_path_rate: float = cfg["drop_path_rate"]
        use_lab = self.uses_lab()
        if any(len(stage) != 8 or stage[3] < 1 for stage in stages_cfg):
            raise ValueError(
                f"{type(self).__name__}: each of stage1..stage4 must be [in, mid, out, blocks >= 1, downsample, "
                f"light_block, kernel_size, num_layers], got {[cfg[key] for key in _STAGE_KEYS]}"
            )

        self.stem = self.make_stem(stem_channels, use_lab)
        dpr = staged_stochastic_depth_rates(drop_path_rate, [stage[3] for stage in stages_cfg])
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (in_ch, mid_ch, out_ch, blocks, downsample, light_block, k, num_layers) in enumerate(stages_cfg):
            stages[f"stage{i + 1}"] = HighPerfGPUStage(
                in_channels=in_ch,
                mid_channels=mid_ch,
                out_channels=out_ch,
                depth=blocks,
                num_layers=num_layers,
                downsample=downsample,
                stride=(2, 2),
                kernel_size=(k, k),
                light_block=light_block,
                use_lab=use_lab,
                use_ese=self.use_ese,
                drop_path=dpr[i],
            )

        last_channels: int = stages_cfg[-1][2]
        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Conv2d(last_channels, _EMBEDDING_SIZE, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            nn.ReLU(),
            LearnableAffineBlock(scale_value=1.0, bias_value=0.0) if use_lab is True else nn.Identity(),
            nn.Flatten(1),
        )
        self.return_channels = [stage[2] for stage in stages_cfg]
        self.embedding_size = _EMBEDDING_SIZE
        self.classifier = self.create_classifier()

        self.max_stride = 4 * 2 ** (len(stages_cfg) - 1)
        self.stem_stride = 4
        self.stem_width = stem_channels[-1]
        self.feature_dim = last_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def required_keys(self) -> tuple[str, ...]:
        return ("stem_channels", *_STAGE_KEYS, "drop_path_rate")

    def uses_lab(self) -> bool:
        return False

    def make_stem(self, stem_channels: list[int], use_lab: bool) -> nn.Module:
        raise NotImplementedError


class HGNet_v1(HGNetBase):
    use_ese: ClassVar[bool] = True

    def make_stem(self, stem_channels: list[int], use_lab: bool) -> nn.Module:
        return Stem([self.input_channels, *stem_channels])
