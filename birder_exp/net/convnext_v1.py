"""ConvNeXt v1 ("A ConvNet for the 2020s", https://arxiv.org/abs/2201.03545), laid out as Birder lays it out.

``ConvNeXtNet`` holds everything ConvNeXt v1 and v2 share (stem, stages, downsampling, head, the detector and
pre-train encoder interfaces); each version only says which residual block it stacks. Module and parameter names
follow Birder's, so Birder checkpoints load strictly.
"""

import logging
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import Permute
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import BlockCheckpointing
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import stochastic_depth_rates

logger = logging.getLogger(__name__)


def inverted_bottleneck(channels: int, hidden_norm: Optional[Callable[[int], nn.Module]] = None) -> nn.Sequential:
    """Depthwise 7x7 -> LayerNorm -> Linear (4x) -> GELU [-> hidden_norm] -> Linear, channels-last in between."""

    layers: list[nn.Module] = [
        nn.Conv2d(channels, channels, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=channels),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(channels, eps=1e-6),
        nn.Linear(channels, 4 * channels),
        nn.GELU(),
    ]
    if hidden_norm is not None:
        layers.append(hidden_norm(4 * channels))

    layers += [nn.Linear(4 * channels, channels), Permute([0, 3, 1, 2])]
    return nn.Sequential(*layers)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> inverted MLP (as Linear on channels-last), layer-scaled residual."""

    def __init__(self, channels: int, layer_scale: float, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.block = inverted_bottleneck(channels)
        self.layer_scale = nn.Parameter(torch.ones(channels, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.block(x)
        if self.training is False or self.stochastic_depth.p == 0.0:
            # Scale and residual add in one pass (drop path is the identity here)
            return torch.addcmul(x, branch, self.layer_scale)

        return self.stochastic_depth(branch * self.layer_scale) + x


class ConvNeXtNet(BlockCheckpointing, StagedBackbone, DetectorBackbone, PreTrainEncoder, MaskedTokenRetentionMixin):
    """The ConvNeXt skeleton shared by v1 and v2; subclasses define ``make_block``."""

    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        cfg = self.require_config("in_channels", "num_layers", "drop_path_rate")
        in_channels: list[int] = list(cfg["in_channels"])
        num_layers: list[int] = list(cfg["num_layers"])
        drop_path_rate: float = cfg["drop_path_rate"]
        drop_path_uniform: bool = cfg.get("drop_path_uniform", False)
        if len(in_channels) != len(num_layers) or len(in_channels) == 0:
            raise ValueError(
                f"{type(self).__name__}: in_channels and num_layers must be non-empty and of equal length, "
                f"got {in_channels} and {num_layers}"
            )

        self._init_grad_checkpointing()

        self.stem = Conv2dNormActivation(
            self.input_channels,
            in_channels[0],
            kernel_size=(4, 4),
            stride=(4, 4),
            padding=(0, 0),
            bias=True,
            norm_layer=LayerNorm2d,
            activation_layer=None,
        )

        dpr = iter(stochastic_depth_rates(drop_path_rate, sum(num_layers), constant=drop_path_uniform))
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        pending_downsample: list[nn.Module] = []
        for idx, (channels, depth) in enumerate(zip(in_channels, num_layers)):
            # A stage opens with the previous stage's downsampling (stage1 has none)
            layers = pending_downsample + [self.make_block(channels, next(dpr)) for _ in range(depth)]
            stages[f"stage{idx + 1}"] = nn.Sequential(*layers)
            if idx + 1 < len(in_channels):
                pending_downsample = [
                    nn.Sequential(
                        LayerNorm2d(channels, eps=1e-6),
                        nn.Conv2d(channels, in_channels[idx + 1], kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
                    )
                ]

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            LayerNorm2d(in_channels[-1], eps=1e-6),
            nn.Flatten(1),
        )
        self.return_channels = in_channels
        self.embedding_size = in_channels[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = in_channels[0]
        self.feature_dim = in_channels[-1]
        self.decoder_block = partial(type(self).make_block, stochastic_depth_prob=0.0)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def make_block(cls, channels: int, stochastic_depth_prob: float) -> nn.Module:
        """The residual block this version stacks (also FCMAE's decoder block, without drop path)."""

        raise NotImplementedError(f"{cls.__name__} must define make_block (the residual block it stacks)")

    def _get_input_conv(self) -> nn.Conv2d:
        conv: nn.Conv2d = self.stem[0]
        return conv

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Mask the stem output in place (``mask`` is per max-stride cell), then run all stages (FCMAE / SimMIM)."""

        x = self.stem(x)
        x = mask_tensor(x, mask, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token)
        return self._retention_result(self._forward_body(x), return_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self._forward_body(x)

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(features)
        return out


class ConvNeXt_v1(ConvNeXtNet):
    """ConvNeXt v1: blocks with a learned layer scale (initialised to 1e-6)."""

    layer_scale_init: ClassVar[float] = 1e-6

    @classmethod
    def make_block(cls, channels: int, stochastic_depth_prob: float) -> nn.Module:
        return ConvNeXtBlock(channels, cls.layer_scale_init, stochastic_depth_prob)
