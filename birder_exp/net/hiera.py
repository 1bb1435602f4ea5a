"""Hiera: a hierarchical ViT whose tokens are kept "unrolled" so that pooling and mask-unit attention are reshapes.

Paper "Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles", https://arxiv.org/abs/2306.00989
AbsWin position embedding from "Window Attention is Bugged: How not to Interpolate Position Embeddings",
https://arxiv.org/abs/2311.05613. Two-dimensional inputs only, as in Birder.

The stem defined here is shared with ``birder_exp.net.hieradet``; block-level gradient checkpointing
(``BlockCheckpointing``, re-exported here) lives in ``birder_exp.net.base``.
"""

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP
from torchvision.ops import StochasticDepth

from birder_exp.layers.activations import get_activation_module
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.masking import mask_from_indices
from birder_exp.layers.patch_embed import adjust_position_embedding
from birder_exp.net.base import BlockCheckpointing
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenOmissionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenOmissionResultType
from birder_exp.net.base import stochastic_depth_rates

logger = logging.getLogger(__name__)

__all__ = [
    "AvgTokens",
    "BlockCheckpointing",
    "Hiera",
    "HieraBlock",
    "MaskUnitAttention",
    "PatchEmbed",
    "Reroll",
    "Unroll",
    "get_resized_mask",
    "undo_windowing",
]

Size2d = tuple[int, int]


def get_resized_mask(target_size: list[int] | torch.Size, mask: torch.Tensor) -> torch.Tensor:
    """Nearest-resize a (B, 1, h, w) mask-unit mask to the pixel grid it gates."""

    if mask.shape[2:] != tuple(target_size):
        return F.interpolate(mask.float(), size=tuple(target_size))

    return mask


def undo_windowing(x: torch.Tensor, shape: list[int] | tuple[int, int]) -> torch.Tensor:
    """(B, #units, mu_y, mu_x, C) mask-unit windows back to a (B, H, W, C) map of spatial size ``shape``."""

    batch, _, mu_y, mu_x, channels = x.size()
    height, width = shape
    x = x.view(batch, height // mu_y, width // mu_x, mu_y, mu_x, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


class AvgTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class PatchEmbed(nn.Module):
    """The overlapping 7x7 / stride 4 convolution stem of Hiera and HieraDet (one ``proj`` conv in both).

    Hiera wants tokens (B, H*W, C) and may gate the pixels with a mask-unit mask (MAE); HieraDet wants a
    channels-last map (B, H, W, C).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        kernel: Size2d,
        stride: Size2d,
        padding: Size2d,
        channels_last_map: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last_map = channels_last_map
        self.proj = nn.Conv2d(dim_in, dim_out, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None:
            x = x * get_resized_mask(x.shape[2:], mask).to(torch.bool)

        x = self.proj(x)
        if self.channels_last_map is True:
            return x.permute(0, 2, 3, 1)

        return x.flatten(2).transpose(1, 2)


class Unroll(nn.Module):
    """Reorder (B, H*W, C) tokens so that every q-pool stride becomes the leading, contiguous axis.

    After unrolling with strides (sy, sx) applied n times, the token order is
    [sy_1, sx_1, ..., sy_n, sx_n, H / prod(sy), W / prod(sx)]: a 2x2 max-pool is then
    ``x.view(B, 4, -1, C).amax(1)`` and a mask unit is a strided slice, for any input and any token subset.
    The spatial order comes back with ``Reroll``.
    """

    def __init__(self, input_size: Size2d, patch_stride: Size2d, unroll_schedule: list[Size2d]) -> None:
        super().__init__()
        self.size = (input_size[0] // patch_stride[0], input_size[1] // patch_stride[1])
        self.schedule = unroll_schedule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        height, width = self.size
        x = x.view(batch, height, width, channels)
        for sy, sx in self.schedule:
            height = height // sy
            width = width // sx
            # (B, h, sy, w, sx, C) -> (B * sy * sx, h, w, C): the stride offsets join the batch axis
            x = x.view(batch, height, sy, width, sx, channels).permute(0, 2, 4, 1, 3, 5)
            batch = batch * sy * sx
            x = x.reshape(batch, height, width, channels)

        return x.reshape(-1, self.size[0] * self.size[1], channels)


class Reroll(nn.Module):
    """Undo ``Unroll`` for the output of a given block (the strides consumed so far are skipped)."""

    def __init__(
        self,
        input_size: Size2d,
        patch_stride: Size2d,
        unroll_schedule: list[Size2d],
        stage_ends: list[int],
        q_pool: int,
    ) -> None:
        super().__init__()
        self.size = (input_size[0] // patch_stride[0], input_size[1] // patch_stride[1])

        # Block i sees the strides not yet pooled away, and the spatial size left after the pooling so far
        self.schedule: dict[int, tuple[list[Size2d], Size2d]] = {}
        size = self.size
        remaining = list(unroll_schedule)
        for i in range(stage_ends[-1] + 1):
            self.schedule[i] = (remaining, size)
            if i in stage_ends[:q_pool]:
                if len(remaining) > 0:
                    size = (size[0] // remaining[0][0], size[1] // remaining[0][1])
                remaining = remaining[1:]

    def forward(self, x: torch.Tensor, block_idx: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, H, W, C) without a mask; with a mask the kept units as (B, #units, mu_y, mu_x, C)."""

        schedule, size = self.schedule[block_idx]
        batch, num_tokens, channels = x.size()
        mu_y = 1
        mu_x = 1
        for sy, sx in schedule:
            x = x.view(batch, sy, sx, num_tokens // (sy * sx), mu_y, mu_x, channels)
            x = x.permute(0, 3, 1, 4, 2, 5, 6)  # (B, N', sy, mu_y, sx, mu_x, C)
            mu_y = mu_y * sy
            mu_x = mu_x * sx
            x = x.reshape(batch, -1, mu_y, mu_x, channels)
            num_tokens = x.size(1)

        x = x.reshape(batch, num_tokens, mu_y, mu_x, channels)
        if mask is not None:
            return x

        return undo_windowing(x, size)


class MaskUnitAttention(nn.Module):
    """Attention within mask units (or global), with the query max-pooled by ``q_stride`` at stage changes."""

    def __init__(
        self, dim: int, dim_out: int, heads: int, q_stride: int, window_size: int, use_mask_unit_attn: bool
    ) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.heads = heads
        self.q_stride = q_stride
        self.head_dim = dim_out // heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.use_mask_unit_attn = use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, _ = x.shape
        num_windows = num_tokens // (self.q_stride * self.window_size) if self.use_mask_unit_attn is True else 1

        # Unrolled order puts the window index last: (B, tokens per window, windows, 3, heads, head_dim)
        qkv = self.qkv(x).reshape(batch, -1, num_windows, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 2, 1, 5).unbind(0)  # each (B, heads, windows, tokens, head_dim)
        if self.q_stride > 1:
            q = q.view(batch, self.heads, num_windows, self.q_stride, -1, self.head_dim).amax(dim=3)

        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        x = x.transpose(1, 3).reshape(batch, -1, self.dim_out)
        return self.proj(x)  # type: ignore[no-any-return]


class HieraBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float,
        drop_path: float,
        q_stride: int,
        window_size: int,
        use_mask_unit_attn: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.proj: Optional[nn.Linear] = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, [int(dim_out * mlp_ratio), dim_out], activation_layer=nn.GELU)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            # Widen the shortcut and max-pool it the same way the query is pooled
            x = self.proj(x_norm)
            x = x.view(x.shape[0], self.attn.q_stride, -1, x.shape[-1]).amax(dim=1)

        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class Hiera(BlockCheckpointing, StagedBackbone, DetectorBackbone, PreTrainEncoder, MaskedTokenOmissionMixin):
    scriptable: ClassVar[bool] = False
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
        cfg = self.require_config("depths", "embed_dim", "num_heads", "abs_win_pos_embed", "drop_path_rate")

        image_size = (self.size[0], self.size[1])
        mask_unit_size = (8, 8)
        q_stride = (2, 2)
        patch_kernel = (7, 7)
        patch_stride = (4, 4)
        patch_padding = (3, 3)
        mask_unit_attn = (True, True, False, False)
        dim_mul = 2.0
        head_mul = 2.0
        mlp_ratio = 4.0
        q_pool: int = cfg.get("q_pool", 3)
        depths: list[int] = cfg["depths"]
        embed_dim: int = cfg["embed_dim"]
        num_heads: int = cfg["num_heads"]
        abs_win_pos_embed: bool = cfg["abs_win_pos_embed"]
        attn_pool_head: bool = cfg.get("attn_pool_head", False)
        attn_pool_type: str = cfg.get("attn_pool_type", "MultiHeadAttentionPool")
        attn_pool_num_heads: Optional[int] = cfg.get("attn_pool_num_heads", None)
        attn_pool_act_layer_type: str = cfg.get("attn_pool_act_layer_type", "gelu")
        drop_path_rate: float = cfg["drop_path_rate"]
        drop_path_uniform: bool = cfg.get("drop_path_uniform", False)

        if not 0 <= q_pool < len(depths):
            raise ValueError(f"Hiera: q_pool must be in [0, {len(depths) - 1}] for {len(depths)} stages, got {q_pool}")
        if attn_pool_type not in ("MultiHeadAttentionPool", "EfficientProbing"):
            raise ValueError(
                f"Hiera: unknown attn_pool_type '{attn_pool_type}' (valid: MultiHeadAttentionPool, EfficientProbing)"
            )

        self._init_grad_checkpointing()

        tokens_spatial_shape = [i // s for i, s in zip(image_size, patch_stride)]
        flat_mu_size = math.prod(mask_unit_size)
        flat_q_stride = math.prod(q_stride)

        self.tokens_spatial_shape = tokens_spatial_shape
        self.mask_unit_size = mask_unit_size
        self.patch_stride = patch_stride
        self.q_stride = q_stride
        self.q_pool = q_pool
        self.mu_size = flat_mu_size
        self.mask_spatial_shape = [i // s for i, s in zip(tokens_spatial_shape, mask_unit_size)]
        self.stage_ends = [sum(depths[:i]) - 1 for i in range(1, len(depths) + 1)]
        self.num_special_tokens = 0
        self.num_layers = sum(depths)

        stem_dim = embed_dim
        self.stem = PatchEmbed(self.input_channels, stem_dim, patch_kernel, patch_stride, patch_padding)

        self.pos_embed_win: Optional[nn.Parameter]
        if abs_win_pos_embed is True:
            # AbsWin: a coarse global table (1/16 of the input) interpolated up, plus one tiled window table
            global_pos_size = (image_size[0] // 16, image_size[1] // 16)
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
            self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, *mask_unit_size))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(tokens_spatial_shape), embed_dim))
            self.pos_embed_win = None

        unroll_schedule = [q_stride] * len(self.stage_ends[:-1])
        self.unroll = Unroll(image_size, patch_stride, unroll_schedule)
        self.reroll = Reroll(image_size, patch_stride, unroll_schedule, self.stage_ends, q_pool)

        q_pool_blocks = [end + 1 for end in self.stage_ends[:q_pool]]
        dpr = stochastic_depth_rates(drop_path_rate, self.num_layers, constant=drop_path_uniform)

        cur_stage = 0
        layers: list[nn.Module] = []
        self.block_count: list[int] = []
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        for i in range(self.num_layers):
            dim_out = embed_dim
            # Mask-unit attention lags the stage by one block, so the first (pooling) block of a global stage
            # still attends within its (shrinking) mask unit
            use_mask_unit_attn = mask_unit_attn[cur_stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
                if i in q_pool_blocks:
                    flat_mu_size //= flat_q_stride

            layers.append(
                HieraBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[i],
                    q_stride=flat_q_stride if i in q_pool_blocks else 1,
                    window_size=flat_mu_size,
                    use_mask_unit_attn=use_mask_unit_attn,
                )
            )
            embed_dim = dim_out
            if i in self.stage_ends:
                stages[f"stage{cur_stage + 1}"] = nn.Sequential(*layers)
                return_channels.append(dim_out)
                self.block_count.append(i)
                layers = []

        pool: nn.Module
        if attn_pool_head is False:
            pool = AvgTokens()
        else:
            pool_cls: type[MultiHeadAttentionPool] | type[EfficientProbing]
            if attn_pool_type == "MultiHeadAttentionPool":
                pool_cls = MultiHeadAttentionPool
                pool_heads = num_heads if attn_pool_num_heads is None else attn_pool_num_heads
            else:
                pool_cls = EfficientProbing
                pool_heads = 1 if attn_pool_num_heads is None else attn_pool_num_heads

            pool = pool_cls(
                embed_dim,
                pool_heads,
                int(mlp_ratio * embed_dim),
                qkv_bias=True,
                activation_layer=get_activation_module(attn_pool_act_layer_type),
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(pool, nn.LayerNorm(embed_dim, eps=1e-6), nn.Flatten(1))  # type: ignore[assignment]
        self.return_channels = return_channels
        self.embedding_size = embed_dim
        self.classifier = self.create_classifier()

        self.max_stride = patch_stride[0] * (q_stride[0] ** q_pool)
        self.stem_stride = patch_stride[0]
        self.stem_width = stem_dim
        self.feature_dim = embed_dim

        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.constant_(m.bias, 0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0.02)
                nn.init.ones_(m.weight)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.pos_embed_win is not None:
            nn.init.trunc_normal_(self.pos_embed_win, std=0.02)
        if isinstance(self.classifier, nn.Linear):
            with torch.no_grad():
                self.classifier.weight.mul_(0.001)
                if self.classifier.bias is not None:
                    self.classifier.bias.mul_(0.001)

    def _get_input_conv(self) -> nn.Conv2d:
        return self.stem.proj

    def _get_pos_embed(self) -> torch.Tensor:
        """(1, N, C) position embedding in the stem's (row-major) token order."""

        if self.pos_embed_win is None:
            return self.pos_embed

        # AbsWin, following SAM 2's interpolation: global table resized to the token grid plus tiled windows
        pos_embed_win = self.pos_embed_win.tile(self.mask_spatial_shape)
        pos_embed = F.interpolate(self.pos_embed, size=pos_embed_win.shape[-2:], mode="bicubic", antialias=True)
        pos_embed = pos_embed + pos_embed_win
        return pos_embed.flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor, patch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.stem(x, patch_mask)
        x = x + self._get_pos_embed()
        return self.unroll(x)  # type: ignore[no-any-return]

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._embed(x)
        out = {}
        for idx, (name, module) in enumerate(self.body.named_children()):
            x = module(x)
            if name in self.return_stages:
                out[name] = self.reroll(x, self.block_count[idx]).permute(0, 3, 1, 2).contiguous()

        return out

    def _stem_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.stem.parameters()
        yield self.pos_embed
        if self.pos_embed_win is not None:
            yield self.pos_embed_win

    def _keep_units(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Drop the tokens of masked mask units; ``keep`` is a (B, #units) bool mask, same count per row."""

        # Unrolled order has the mask-unit index as the fastest axis, so the unit mask tiles over the tokens
        token_keep = keep[..., None].tile(1, self.mu_size, x.shape[2])
        return x[token_keep].view(x.shape[0], -1, x.shape[-1])

    def masked_encoding_omission(
        self,
        x: torch.Tensor,
        ids_keep: Optional[torch.Tensor] = None,
        return_all_features: bool = False,
        return_keys: Literal["all", "tokens", "embedding"] = "tokens",
    ) -> TokenOmissionResultType:
        """Encode only the mask units listed in ``ids_keep`` (B, K), indices into the mask-unit grid."""

        if return_all_features is True:
            raise ValueError("Hiera.masked_encoding_omission: return_all_features=True is not supported")

        keep: Optional[torch.Tensor] = None
        patch_mask: Optional[torch.Tensor] = None
        if ids_keep is not None:
            keep = mask_from_indices(ids_keep, math.prod(self.mask_spatial_shape)).bool()
            patch_mask = keep.view(x.shape[0], 1, *self.mask_spatial_shape)

        x = self._embed(x, patch_mask)
        if keep is not None:
            x = self._keep_units(x, keep)

        return self._omission_result(self._forward_body(x), False, return_keys)

    def masked_encoding(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """MAE-Hiera's encoder pass; ``mask`` is (B, #units) with 1 = masked.

        Returns every returned stage's kept units as (B, #kept, mu_y, mu_x, C) and the bool keep-mask.
        """

        keep = (1 - mask).bool()
        x = self._embed(x, keep.view(x.shape[0], 1, *self.mask_spatial_shape))
        x = self._keep_units(x, keep)

        out = []
        for idx, (name, module) in enumerate(self.body.named_children()):
            if self._checkpointing_active() is True:
                x = self._run_checkpointed(tuple(module.children()), x)
            else:
                x = module(x)
            if name in self.return_stages:
                out.append(self.reroll(x, self.block_count[idx], mask=keep))

        return (out, keep)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_body(self._embed(x))

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.features(features)  # type: ignore[no-any-return]

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        if dynamic_size is True:
            raise ValueError(
                f"{type(self).__name__} does not support dynamic size (its token unrolling is fixed by the "
                "input size); use adjust_size(new_size) instead"
            )

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        old_size = self.size
        super().adjust_size(new_size)

        with torch.no_grad():
            if self.pos_embed_win is not None:
                resized = self.pos_embed.detach()
                if resized.dtype in (torch.float16, torch.bfloat16):
                    resized = resized.float()
                global_pos_size = (new_size[0] // 16, new_size[1] // 16)
                resized = F.interpolate(resized, size=global_pos_size, mode="bicubic", antialias=True)
                resized = resized.to(self.pos_embed.dtype)
            else:
                resized = adjust_position_embedding(
                    self.pos_embed,
                    (old_size[0] // self.patch_stride[0], old_size[1] // self.patch_stride[1]),
                    (new_size[0] // self.patch_stride[0], new_size[1] // self.patch_stride[1]),
                    0,
                )

        self.pos_embed = nn.Parameter(resized, requires_grad=self.pos_embed.requires_grad)

        self.tokens_spatial_shape = [i // s for i, s in zip(new_size, self.patch_stride)]
        self.mask_spatial_shape = [i // s for i, s in zip(self.tokens_spatial_shape, self.mask_unit_size)]
        unroll_schedule = [self.q_stride] * len(self.stage_ends[:-1])
        self.unroll = Unroll(new_size, self.patch_stride, unroll_schedule)
        self.reroll = Reroll(new_size, self.patch_stride, unroll_schedule, self.stage_ends, self.q_pool)
