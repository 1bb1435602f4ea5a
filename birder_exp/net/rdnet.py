"""RDNet ("DenseNets Reloaded: Paradigm Shift Beyond ResNets and ViTs", https://arxiv.org/abs/2403.19588), laid out
as Birder lays it out.

DenseNet with ConvNeXt-style mixing: each dense block reads the concatenation of everything its stage produced so
far, runs a depthwise 7x7 + LayerNorm + inverted bottleneck (optionally effective SE), scales the ``growth_rate``
new channels and appends them. Between dense stages a LayerNorm + conv compresses the channels (and halves the
resolution where ``is_downsample_block`` says so, which also closes a detection stage).
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import MaskedStagedConvNet
from birder_exp.net.vovnet_v2 import EffectiveSE

_REQUIRED_KEYS = (
    "num_init_features",
    "growth_rates",
    "num_blocks_list",
    "is_downsample_block",
    "transition_compression_ratio",
    "block_type_name",
    "drop_path_rate",
)
_BOTTLENECK_WIDTH_RATIO = 4.0
_LS_INIT_VALUE = 1e-6


class Block(nn.Sequential):
    """Depthwise 7x7, LayerNorm, 1x1 expand, GELU, 1x1 to the growth rate."""

    def __init__(self, in_channels: int, inter_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=in_channels),
            LayerNorm2d(in_channels, eps=1e-6),
            nn.Conv2d(in_channels, inter_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)),
            nn.GELU(),
            nn.Conv2d(inter_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)),
        )


class BlockESE(Block):
    """``Block`` followed by effective squeeze-excitation on the new channels."""

    def __init__(self, in_channels: int, inter_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, inter_channels, out_channels)
        self.append(EffectiveSE(out_channels))


_BLOCK_TYPES: dict[str, type[Block]] = {"Block": Block, "BlockESE": BlockESE}


class DenseBlock(nn.Module):
    """Concatenate the stage's features so far, make ``growth_rate`` new channels, layer-scale and drop-path them."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bottleneck_width_ratio: float,
        drop_path_rate: float,
        block_type: type[Block],
        ls_init_value: float,
    ) -> None:
        super().__init__()
        growth_rate = int(growth_rate)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(growth_rate))
        inter_channels = int(num_input_features * bottleneck_width_ratio / 8) * 8
        self.drop_path = StochasticDepth(drop_path_rate, mode="row")
        self.layers = block_type(num_input_features, inter_channels, growth_rate)

    def forward(self, xl: list[torch.Tensor]) -> torch.Tensor:
        x = self.layers(torch.concat(xl, dim=1))
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x)  # type: ignore[no-any-return]


class DenseStage(nn.Module):
    """``num_block`` dense blocks; returns the input with every block's new channels appended."""

    def __init__(
        self,
        num_block: int,
        num_input_features: int,
        drop_path_rates: list[float],
        growth_rate: int,
        bottleneck_width_ratio: float,
        block_name: str,
        ls_init_value: float,
    ) -> None:
        super().__init__()
        if block_name not in _BLOCK_TYPES:
            raise ValueError(f"RDNet: unknown block_type_name {block_name!r}, expected one of {sorted(_BLOCK_TYPES)}")

        self.layers = nn.ModuleList()
        for i in range(num_block):
            self.layers.append(
                DenseBlock(
                    num_input_features,
                    growth_rate=growth_rate,
                    bottleneck_width_ratio=bottleneck_width_ratio,
                    drop_path_rate=drop_path_rates[i],
                    block_type=_BLOCK_TYPES[block_name],
                    ls_init_value=ls_init_value,
                )
            )
            num_input_features += growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for module in self.layers:
            features.append(module(features))

        return torch.concat(features, dim=1)


class RDNet(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.\d+\.layers\.(\d+)"
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
        num_init_features: int = config["num_init_features"]
        growth_rates: list[int] = list(config["growth_rates"])
        num_blocks_list: list[int] = list(config["num_blocks_list"])
        is_downsample_block: list[bool] = list(config["is_downsample_block"])
        compression: float = config["transition_compression_ratio"]
        block_type_name: list[str] = list(config["block_type_name"])
        drop_path_rate: float = config["drop_path_rate"]

        lengths = [len(growth_rates), len(num_blocks_list), len(is_downsample_block), len(block_type_name)]
        if len(set(lengths)) != 1:
            raise ValueError(
                f"{type(self).__name__}: growth_rates, num_blocks_list, is_downsample_block and block_type_name need "
                f"one entry per dense stage each, got lengths {lengths}"
            )
        if sum(bool(flag) for flag in is_downsample_block[1:]) != 3:
            raise ValueError(
                f"{type(self).__name__}: is_downsample_block needs exactly 3 True entries after the first "
                f"(four stages, stride 32), got {is_downsample_block}"
            )

        self.stem = nn.Sequential(
            nn.Conv2d(self.input_channels, num_init_features, kernel_size=(4, 4), stride=(4, 4), padding=(0, 0)),
            LayerNorm2d(num_init_features, eps=1e-6),
        )

        dp_rates = staged_stochastic_depth_rates(drop_path_rate, num_blocks_list)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        layers: list[nn.Module] = []
        num_features = num_init_features
        for i, num_blocks in enumerate(num_blocks_list):
            if i > 0:
                compressed = int(num_features * compression / 8) * 8
                kernel = (1, 1)
                if is_downsample_block[i] is True:
                    stages[f"stage{len(stages) + 1}"] = nn.Sequential(*layers)
                    return_channels.append(num_features)
                    layers = []
                    kernel = (2, 2)

                layers.append(LayerNorm2d(num_features, eps=1e-6))
                layers.append(nn.Conv2d(num_features, compressed, kernel_size=kernel, stride=kernel, padding=(0, 0)))
                num_features = compressed

            layers.append(
                DenseStage(
                    num_blocks,
                    num_features,
                    drop_path_rates=dp_rates[i],
                    growth_rate=growth_rates[i],
                    bottleneck_width_ratio=_BOTTLENECK_WIDTH_RATIO,
                    block_name=block_type_name[i],
                    ls_init_value=_LS_INIT_VALUE,
                )
            )
            num_features += num_blocks * growth_rates[i]

        stages[f"stage{len(stages) + 1}"] = nn.Sequential(*layers)
        return_channels.append(num_features)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            LayerNorm2d(num_features, eps=1e-5),
            nn.Flatten(1),
        )
        self.return_channels = return_channels
        self.embedding_size = num_features
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = num_init_features
        self.feature_dim = num_features

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
