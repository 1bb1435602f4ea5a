"""MobileNet v3 ("Searching for MobileNetV3", https://arxiv.org/abs/1905.02244), large and small, as Birder lays
them out: inverted residuals with hard-sigmoid squeeze-and-excitation, ReLU / hard-swish, widths scaled by
``alpha`` and rounded to multiples of 8.

Birder's head differs from the base class's: the MLP head is on by default and is Linear -> Hardswish ->
Dropout -> Linear through ``last_channels``. As in Birder, the blocks before the first stride form a ``stage0``
(empty in the small model) that detection features do not return.
"""

from functools import partial
from typing import Any
from typing import NamedTuple
from typing import Optional

from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.layers.inverted_residual import same_padding
from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import StagedConvNet
from birder_exp.net.staged_convnet import init_mobile_weights
from birder_exp.net.staged_convnet import split_at_strides


class BlockSetting(NamedTuple):
    """One row of the paper's Tables 1 / 2 (channels before the ``alpha`` scaling)."""

    in_channels: int
    out_channels: int
    expanded_channels: int
    kernel: int
    stride: int
    use_se: bool
    hard_swish: bool


def _rows(table: str) -> tuple[BlockSetting, ...]:
    """``in out expanded kernel stride se(0/1) activation(RE/HS)`` per row."""

    rows = []
    for line in table.strip().splitlines():
        c_in, c_out, c_exp, kernel, stride, se, act = line.split()
        rows.append(BlockSetting(int(c_in), int(c_out), int(c_exp), int(kernel), int(stride), se == "1", act == "HS"))

    return tuple(rows)


_LARGE = _rows(
    """
    16 16 16 3 1 0 RE
    16 24 64 3 2 0 RE
    24 24 72 3 1 0 RE
    24 40 72 5 2 1 RE
    40 40 120 5 1 1 RE
    40 40 120 5 1 1 RE
    40 80 240 3 2 0 HS
    80 80 200 3 1 0 HS
    80 80 184 3 1 0 HS
    80 80 184 3 1 0 HS
    80 112 480 3 1 1 HS
    112 112 672 3 1 1 HS
    112 160 672 5 2 1 HS
    160 160 960 5 1 1 HS
    160 160 960 5 1 1 HS
    """
)
_SMALL = _rows(
    """
    16 16 16 3 2 1 RE
    16 24 72 3 2 0 RE
    24 24 88 3 1 0 RE
    24 40 96 5 2 1 HS
    40 40 240 5 1 1 HS
    40 40 240 5 1 1 HS
    40 48 120 5 1 1 HS
    48 48 144 5 1 1 HS
    48 96 288 5 2 1 HS
    96 96 576 5 1 1 HS
    96 96 576 5 1 1 HS
    """
)


def _block(setting: BlockSetting, alpha: float) -> tuple[InvertedResidual, tuple[int, int], int]:
    in_channels = make_divisible(setting.in_channels * alpha, 8)
    out_channels = make_divisible(setting.out_channels * alpha, 8)
    expanded = make_divisible(setting.expanded_channels * alpha, 8)
    kernel = (setting.kernel, setting.kernel)
    stride = (setting.stride, setting.stride)
    se = None
    if setting.use_se is True:
        se = SqueezeExcitation(expanded, make_divisible(expanded // 4, 8), scale_activation=nn.Hardsigmoid)

    block = InvertedResidual(
        in_channels,
        out_channels,
        expanded_channels=expanded,
        kernel_size=kernel,
        stride=stride,
        padding=same_padding(kernel),
        activation_layer=nn.Hardswish if setting.hard_swish is True else nn.ReLU,
        shortcut=stride == (1, 1) and in_channels == out_channels,
        se=se,
    )
    return (block, stride, out_channels)


class MobileNet_v3(StagedConvNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        config = self.require_config("alpha", "large")
        alpha: float = config["alpha"]
        large: bool = config["large"]
        self.mlp_head = config.get("mlp_head", True)

        settings = _LARGE if large is True else _SMALL
        stem_width = make_divisible(settings[0].in_channels * alpha, 8)
        width = make_divisible(settings[-1].out_channels * alpha, 8)
        self.last_channels = make_divisible((1280 if large is True else 1024) * alpha, 8)

        self.stem = Conv2dNormActivation(
            self.input_channels,
            stem_width,
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            bias=False,
            activation_layer=nn.Hardswish,
        )
        self.body, stage_channels = split_at_strides([_block(s, alpha) for s in settings], stem_width)
        self.features = nn.Sequential(  # type: ignore[assignment]
            Conv2dNormActivation(
                width,
                width * 6,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                bias=False,
                activation_layer=nn.Hardswish,
            ),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = stage_channels[1:5]
        self.embedding_size = width * 6
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = width

        init_mobile_weights(self, partial(nn.init.normal_, mean=0.0, std=0.01))

    def create_classifier(
        self, embed_dim: Optional[int] = None, head_bias: Optional[bool] = None, mlp_head: Optional[bool] = None
    ) -> nn.Module:
        """The paper's head: through ``last_channels`` with hard-swish and dropout (on unless ``mlp_head`` is off)."""

        if self.num_classes == 0:
            return nn.Identity()

        embed_dim = self.embedding_size if embed_dim is None else embed_dim
        head_bias = self.head_bias if head_bias is None else head_bias
        mlp_head = self.mlp_head if mlp_head is None else mlp_head
        if mlp_head is True:
            return nn.Sequential(
                nn.Linear(embed_dim, self.last_channels),
                nn.Hardswish(inplace=True),
                nn.Dropout(p=0.2, inplace=True),
                nn.Linear(self.last_channels, self.num_classes, bias=head_bias),
            )

        return nn.Linear(embed_dim, self.num_classes, bias=head_bias)
