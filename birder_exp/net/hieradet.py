"""HieraDet: SAM 2's image encoder, a Hiera working on (B, H, W, C) maps with windowed attention.

Paper "SAM 2: Segment Anything in Images and Videos", https://arxiv.org/abs/2408.00714
As in Birder: a negative ``window_spec`` entry -d means "min(input size) // d" (a window that follows the input
size), a zero entry means global attention, and features are normalised before the global pooling.
"""

import copy
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP
from torchvision.ops import Permute
from torchvision.ops import StochasticDepth

from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import BlockCheckpointing
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import stochastic_depth_rates
from birder_exp.net.hiera import PatchEmbed

logger = logging.getLogger(__name__)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * #windows, ws, ws, C), zero-padding H and W up to multiples of the window."""

    batch, height, width, channels = x.size()
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))

    padded_h = height + pad_h
    padded_w = width + pad_w
    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, channels)
    return (windows, (padded_h, padded_w))


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``, cropping the padding away."""

    padded_h, padded_w = pad_hw
    height, width = hw
    batch = windows.shape[0] // (padded_h * padded_w // window_size // window_size)
    x = windows.view(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()

    return x


class MultiScaleAttention(nn.Module):
    """Attention over a (B, H, W, C) map whose query may be max-pooled (the stage-change downsample)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: Optional[nn.Module]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.size()
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).unbind(dim=2)
        if self.q_pool is not None:
            q = self.q_pool(q.reshape(batch, height, width, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)

        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(x)  # type: ignore[no-any-return]


class MultiScaleBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        q_stride: Optional[tuple[int, int]],
        window_size: int,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.proj: nn.Module = nn.Linear(dim, dim_out) if dim != dim_out else nn.Identity()
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool: Optional[nn.MaxPool2d] = None
        if q_stride is not None:
            self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)

        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=copy.deepcopy(self.pool))
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, [int(dim_out * mlp_ratio), dim_out], activation_layer=nn.GELU)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = self.pool(shortcut.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

        window_size = self.window_size
        height, width = shortcut.size(1), shortcut.size(2)
        pad_hw = (height, width)
        if window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, window_size)

        x = self.attn(x)
        if self.q_stride is not None:
            # The query pooling shrank every window (and the padded map) by the stride
            window_size = self.window_size // self.q_stride[0]
            pad_hw = (pad_hw[0] // self.q_stride[0], pad_hw[1] // self.q_stride[1])
            height, width = shortcut.size(1), shortcut.size(2)

        if self.window_size > 0:
            x = window_unpartition(x, window_size, pad_hw, (height, width))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


def _window_size_for(
    block_idx: int, stage_idx: int, window_spec: list[int], global_blocks: list[int], size: Any
) -> int:
    """The attention window of a block: 0 for global blocks, a negative spec follows the input size."""

    window_size = window_spec[stage_idx]
    if block_idx in global_blocks:
        return 0
    if window_size < 0:
        return min(size) // -window_size

    return window_size


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


class HieraDet(BlockCheckpointing, StagedBackbone, DetectorBackbone, PreTrainEncoder, MaskedTokenRetentionMixin):
    block_group_regex = r"body\.stage(\d+)\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        cfg = self.require_config(
            "depths", "embed_dim", "num_heads", "global_pos_size", "global_att_blocks", "window_spec", "drop_path_rate"
        )

        patch_kernel = (7, 7)
        patch_stride = (4, 4)
        patch_padding = (3, 3)
        q_stride = (2, 2)
        q_pool = 3
        dim_mul = 2.0
        head_mul = 2.0
        depths: list[int] = cfg["depths"]
        embed_dim: int = cfg["embed_dim"]
        num_heads: int = cfg["num_heads"]
        global_pos_size: tuple[int, int] = tuple(cfg["global_pos_size"])  # type: ignore[assignment]
        global_att_blocks: list[int] = cfg["global_att_blocks"]
        window_spec: list[int] = cfg["window_spec"]
        drop_path_rate: float = cfg["drop_path_rate"]
        drop_path_uniform: bool = cfg.get("drop_path_uniform", False)

        if len(window_spec) != len(depths):
            raise ValueError(f"HieraDet: window_spec needs one entry per stage ({len(depths)}), got {window_spec}")
        if len(depths) - 1 < q_pool:
            raise ValueError(f"HieraDet: depths needs at least {q_pool + 1} stages, got {depths}")

        self._init_grad_checkpointing()

        self.stage_ends = [sum(depths[:i]) - 1 for i in range(1, len(depths) + 1)]
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]

        stem_dim = embed_dim
        self.stem = PatchEmbed(
            self.input_channels, stem_dim, patch_kernel, patch_stride, patch_padding, channels_last_map=True
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
        self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        depth = sum(depths)
        dpr = stochastic_depth_rates(drop_path_rate, depth, constant=drop_path_uniform)

        cur_stage = 1
        layers: list[nn.Module] = []
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        for i in range(depth):
            dim_out = embed_dim
            # The window lags the stage by one block: a stage's pooling block still uses the previous window
            window_size = _window_size_for(i, cur_stage - 1, window_spec, global_att_blocks, self.size)
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1

            layers.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    mlp_ratio=4.0,
                    drop_path=dpr[i],
                    q_stride=q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out
            if i in self.stage_ends:
                stages[f"stage{cur_stage}"] = nn.Sequential(*layers)
                return_channels.append(dim_out)
                layers = []

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(
            nn.LayerNorm(embed_dim, eps=1e-6),
            Permute([0, 3, 1, 2]),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )  # type: ignore[assignment]
        self.return_channels = return_channels
        self.embedding_size = embed_dim
        self.classifier = self.create_classifier()

        self.max_stride = patch_stride[0] * q_stride[0] ** q_pool
        self.stem_stride = patch_stride[0]
        self.stem_width = stem_dim
        self.feature_dim = embed_dim

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_win, std=0.02)

    def _get_input_conv(self) -> nn.Conv2d:
        return self.stem.proj

    def _get_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global table resized to the stem's grid plus the tiled window table, channels last."""

        height, width = x.size(1), x.size(2)
        window_embed = self.pos_embed_win
        pos_embed = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        pos_embed = pos_embed + window_embed.tile([i // j for i, j in zip(pos_embed.shape, window_embed.shape)])
        return pos_embed.permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return x + self._get_pos_embed(x)  # type: ignore[no-any-return]

    def _detection_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)

    def _detection_output(self, x: torch.Tensor) -> torch.Tensor:
        return _to_channels_first(x)

    def _stem_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.stem.parameters()
        yield self.pos_embed
        yield self.pos_embed_win

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """``mask`` is (B, (H / max_stride) * (W / max_stride)), 1 = masked; masked cells are zeroed or
        replaced by ``mask_token`` right after the stem, before the position embedding."""

        x = self.stem(x)
        x = mask_tensor(
            x, mask, channels_last=True, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token
        )
        x = x + self._get_pos_embed(x)
        return self._retention_result(self._forward_body(x), return_keys, to_feature_map=_to_channels_first)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_body(self._embed(x))

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        return features.flatten(1, 2)

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.features(features)  # type: ignore[no-any-return]

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        super().adjust_size(new_size)

        assert self.config is not None
        global_att_blocks: list[int] = self.config["global_att_blocks"]
        window_spec: list[int] = self.config["window_spec"]
        cur_stage = 1
        blocks = [m for m in self.body.modules() if isinstance(m, MultiScaleBlock)]
        for i, block in enumerate(blocks):
            block.window_size = _window_size_for(i, cur_stage - 1, window_spec, global_att_blocks, new_size)
            if i - 1 in self.stage_ends:
                cur_stage += 1

    def load_hiera_weights(self, state_dict: dict[str, Any]) -> None:
        """Load a Hiera (AbsWin, average-pool head) checkpoint; the classifier is dropped.

        Only the AbsWin variant maps onto HieraDet; an attention-pool head does not.
        """

        state_dict.pop("classifier.weight", None)
        state_dict.pop("classifier.bias", None)
        if "features.1.weight" not in state_dict or state_dict["pos_embed"].ndim != 4:
            raise ValueError(
                "load_hiera_weights takes a Hiera AbsWin checkpoint with an average-pool head "
                "(4-d pos_embed and features.1.weight)"
            )

        if self.pos_embed.size(3) != state_dict["pos_embed"].size(3):
            state_dict["pos_embed"] = F.interpolate(
                state_dict["pos_embed"], size=self.pos_embed.shape[2:4], mode="bicubic"
            )

        # Hiera's head is (pool, norm, flatten); HieraDet normalises first
        state_dict["features.0.weight"] = state_dict.pop("features.1.weight")
        state_dict["features.0.bias"] = state_dict.pop("features.1.bias")
        incompatible_keys = self.load_state_dict(state_dict, strict=False)
        if len(incompatible_keys.unexpected_keys) > 0:
            raise ValueError(
                f"load_hiera_weights: checkpoint keys HieraDet does not have: {incompatible_keys.unexpected_keys[:5]}"
            )
