"""ConvNeXt v1 ("A ConvNet for the 2020s", https://arxiv.org/abs/2201.03545), laid out as Birder lays it out.

``ConvNeXtNet`` holds everything ConvNeXt v1 and v2 share (stem, stages, downsampling, head, the detector and
pre-train encoder interfaces); each version only says which residual block it stacks. Module and parameter names
follow Birder's, so Birder checkpoints load strictly.
"""

import logging
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import Permute
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import stochastic_depth_rates

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("in_channels", "num_layers", "drop_path_rate")


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> inverted MLP (as Linear on channels-last), layer-scaled residual."""

    def __init__(self, channels: int, layer_scale: float, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=channels),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(channels, eps=1e-6),
            nn.Linear(channels, 4 * channels),
            nn.GELU(),
            nn.Linear(4 * channels, channels),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(channels, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.block(x)
        if self.training is False or self.stochastic_depth.p == 0.0:
            # Scale and residual add in one pass (drop path is the identity here)
            return torch.addcmul(x, branch, self.layer_scale)

        return self.stochastic_depth(branch * self.layer_scale) + x


class ConvNeXtNet(DetectorBackbone, PreTrainEncoder, MaskedTokenRetentionMixin):
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
        if self.config is None or any(key not in self.config for key in _REQUIRED_KEYS):
            raise ValueError(
                f"{type(self).__name__} needs a config with {', '.join(_REQUIRED_KEYS)} "
                f"(e.g. register a name with register_model_config), got {self.config!r}"
            )

        in_channels: list[int] = list(self.config["in_channels"])
        num_layers: list[int] = list(self.config["num_layers"])
        drop_path_rate: float = self.config["drop_path_rate"]
        drop_path_uniform: bool = self.config.get("drop_path_uniform", False)
        if len(in_channels) != len(num_layers) or len(in_channels) == 0:
            raise ValueError(
                f"{type(self).__name__}: in_channels and num_layers must be non-empty and of equal length, "
                f"got {in_channels} and {num_layers}"
            )

        self.grad_checkpointing = False
        self.grad_checkpointing_segments: Optional[int] = None
        self.grad_checkpointing_preserve_rng_state = True
        self.grad_checkpointing_use_reentrant = False
        self._grad_checkpointing_blocks: tuple[nn.Module, ...] = ()

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

    def set_grad_checkpointing(
        self,
        enable: bool = True,
        *,
        segments: Optional[int] = None,
        preserve_rng_state: bool = True,
        use_reentrant: bool = False,
    ) -> None:
        if enable is True:
            logger.debug(
                f"Enabling gradient checkpointing: segments={segments}, "
                f"preserve_rng_state={preserve_rng_state}, use_reentrant={use_reentrant}"
            )
        else:
            logger.debug("Disabling gradient checkpointing")

        self.grad_checkpointing = enable
        self.grad_checkpointing_segments = segments
        self.grad_checkpointing_preserve_rng_state = preserve_rng_state
        self.grad_checkpointing_use_reentrant = use_reentrant
        if enable is True:
            self._grad_checkpointing_blocks = tuple(block for stage in self.body for block in stage.children())
        else:
            self._grad_checkpointing_blocks = ()

    def _run_body(self, x: torch.Tensor) -> torch.Tensor:
        """All stages, checkpointed block by block (or in ``segments`` groups) when enabled and training."""

        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            blocks: Sequence[nn.Module] = self._grad_checkpointing_blocks
            segments = len(blocks)
            if self.grad_checkpointing_segments is not None:
                segments = min(self.grad_checkpointing_segments, segments)

            out: torch.Tensor = checkpoint_sequential(
                blocks,  # type: ignore[arg-type]
                segments,
                x,
                use_reentrant=self.grad_checkpointing_use_reentrant,
                preserve_rng_state=self.grad_checkpointing_preserve_rng_state,
            )
            return out

        out = self.body(x)
        return out

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.return_stages:
                out[name] = x

        return out

    def freeze_stages(self, up_to_stage: int) -> None:
        """Freeze the stem and the first ``up_to_stage`` stages."""

        for param in self.stem.parameters():
            param.requires_grad_(False)

        for idx, module in enumerate(self.body.children()):
            if idx >= up_to_stage:
                break
            for param in module.parameters():
                param.requires_grad_(False)

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
        x = self._run_body(x)

        result: TokenRetentionResultType = {}
        if return_keys in ("all", "features"):
            result["features"] = x
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.features(x)

        return result

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self._run_body(x)

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(features)
        return out


class ConvNeXt_v1(ConvNeXtNet):
    """ConvNeXt v1: blocks with a learned layer scale (initialised to 1e-6)."""

    layer_scale_init: ClassVar[float] = 1e-6

    @classmethod
    def make_block(cls, channels: int, stochastic_depth_prob: float) -> nn.Module:
        return ConvNeXtBlock(channels, cls.layer_scale_init, stochastic_depth_prob)
