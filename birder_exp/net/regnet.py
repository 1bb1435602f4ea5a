"""RegNet X / Y ("Designing Network Design Spaces", https://arxiv.org/abs/2003.13678), as Birder builds it
(after torchvision's): a quantised linear width rule turned into stages of residual group-conv bottlenecks,
with squeeze-and-excitation for the Y models (``se_ratio`` > 0).
"""

import math
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("depth", "w_0", "w_a", "w_m", "group_width", "se_ratio")


@dataclass(frozen=True)
class StageParams:
    width: int
    stride: int
    depth: int
    group_width: int
    bottleneck_multiplier: float


def stage_params(
    depth: int, w_0: int, w_a: float, w_m: float, group_width: int, bottleneck_multiplier: float
) -> list[StageParams]:
    """Per-stage widths and depths from the RegNet design parameters.

    Block j gets the continuous width ``w_0 + j * w_a``, snapped to ``w_0 * w_m^k`` (k rounded in log space) and
    quantised to a multiple of 8; consecutive blocks of equal width form a stage. Computed in float32 torch ops on
    the CPU, exactly as Birder does, so the rounding boundaries fall in the same places.
    """

    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
        raise ValueError(
            f"Invalid RegNet settings: need w_a >= 0, w_m > 1 and w_0 a positive multiple of 8, "
            f"got w_0={w_0}, w_a={w_a}, w_m={w_m}"
        )

    quant = 8
    widths_cont = torch.arange(depth, device="cpu") * w_a + w_0
    exponents = torch.round(torch.log(widths_cont / w_0) / math.log(w_m))
    block_widths: list[int] = (torch.round(w_0 * torch.pow(w_m, exponents) / quant) * quant).int().tolist()

    stage_widths: list[int] = []
    stage_depths: list[int] = []
    for width in block_widths:
        if len(stage_widths) > 0 and stage_widths[-1] == width:
            stage_depths[-1] += 1
        else:
            stage_widths.append(width)
            stage_depths.append(1)

    stages = []
    for width, stage_depth in zip(stage_widths, stage_depths):
        # The bottleneck width must be a multiple of the (possibly reduced) group width
        bottleneck = int(width * bottleneck_multiplier)
        stage_group_width = min(group_width, bottleneck)
        bottleneck = make_divisible(bottleneck, stage_group_width)
        stages.append(
            StageParams(
                width=int(bottleneck / bottleneck_multiplier),
                stride=2,
                depth=stage_depth,
                group_width=stage_group_width,
                bottleneck_multiplier=bottleneck_multiplier,
            )
        )

    return stages


class BottleneckTransform(nn.Module):
    """1x1 -> grouped 3x3 (strided) -> optional SE -> 1x1 (linear)."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: tuple[int, int],
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float,
        activation_layer: Callable[..., nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        w_b = round(width_out * bottleneck_multiplier)
        se_width = round(se_ratio * width_in)  # Squeeze width follows the block input, as in the paper
        se: nn.Module = nn.Identity()
        if se_width > 0:
            se = SqueezeExcitation(input_channels=w_b, squeeze_channels=se_width, activation=activation_layer)

        self.block = nn.Sequential(
            Conv2dNormActivation(
                width_in,
                w_b,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                activation_layer=activation_layer,
                bias=False,
            ),
            Conv2dNormActivation(
                w_b,
                w_b,
                kernel_size=(3, 3),
                stride=stride,
                padding=(1, 1),
                groups=w_b // group_width,
                activation_layer=activation_layer,
                bias=False,
            ),
            se,
            Conv2dNormActivation(
                w_b, width_out, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), activation_layer=None, bias=False
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


def decoder_block(channels: int, se_ratio: float, activation_layer: Callable[..., nn.Module]) -> nn.Module:
    """FCMAE's decoder block: an unstrided bottleneck transform of group width 64."""

    return BottleneckTransform(
        channels,
        channels,
        stride=(1, 1),
        group_width=64,
        bottleneck_multiplier=1.0,
        se_ratio=se_ratio,
        activation_layer=activation_layer,
    )


class ResBottleneckBlock(nn.Module):
    """Projected (or identity) shortcut + bottleneck transform, then ReLU."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: tuple[int, int],
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float,
    ) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        if width_in != width_out or stride != (1, 1):
            self.proj = Conv2dNormActivation(
                width_in,
                width_out,
                kernel_size=(1, 1),
                stride=stride,
                padding=(0, 0),
                bias=False,
                activation_layer=None,
            )

        self.f = BottleneckTransform(width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.proj(x) + self.f(x))


class AnyStage(nn.Module):
    """``depth`` blocks; the first one changes width and stride."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: tuple[int, int],
        depth: int,
        block_factory: Callable[[int, int, tuple[int, int]], nn.Module],
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                block_factory(width_in if i == 0 else width_out, width_out, stride if i == 0 else (1, 1))
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


def regnet_stages(
    stem_width: int, params: list[StageParams], block: Callable[..., nn.Module], se_ratio: float
) -> tuple[nn.Sequential, list[int]]:
    """``body`` (stage1..stageN of ``AnyStage``) and each stage's output width."""

    stages: OrderedDict[str, nn.Module] = OrderedDict()
    widths: list[int] = []
    width_in = stem_width
    for idx, p in enumerate(params):
        factory = partial(
            block, group_width=p.group_width, bottleneck_multiplier=p.bottleneck_multiplier, se_ratio=se_ratio
        )
        stages[f"stage{idx + 1}"] = AnyStage(width_in, p.width, (p.stride, p.stride), p.depth, factory)
        widths.append(p.width)
        width_in = p.width

    return nn.Sequential(stages), widths


def init_regnet_weights(net: nn.Module, grouped_fan_out: bool) -> None:
    """He-normal convs (fan-out, optionally divided by groups as RegNet Z does), unit norms, small linears."""

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            if grouped_fan_out is True:
                fan_out //= m.groups
            nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class RegNet(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.block\.(\d+)"
    grad_checkpointing_supported: ClassVar[bool] = True

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        config = self.require_config(*_REQUIRED_KEYS)
        stem_width = 32
        se_ratio: float = config["se_ratio"]
        params = stage_params(config["depth"], config["w_0"], config["w_a"], config["w_m"], config["group_width"], 1.0)

        self.stem = Conv2dNormActivation(
            self.input_channels, stem_width, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
        )
        self.body, widths = regnet_stages(stem_width, params, ResBottleneckBlock, se_ratio)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = widths
        self.embedding_size = widths[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = widths[-1]
        self.decoder_block = partial(decoder_block, se_ratio=se_ratio, activation_layer=nn.ReLU)

        init_regnet_weights(self, grouped_fan_out=False)

    def checkpoint_blocks(self) -> Iterator[nn.Module]:
        for stage in self.body:
            assert isinstance(stage, AnyStage)
            yield from stage.block
