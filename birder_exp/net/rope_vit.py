"""RoPE ViT: a ViT whose attention rotates patch queries and keys by their 2D position.

Paper "Rotary Position Embedding for Vision Transformer", https://arxiv.org/abs/2403.13298. Module and
attribute names follow Birder's ``birder.net.rope_vit`` so its checkpoints load with ``strict=True``.

Token order is ``[registers..., class token, patches...]``. Special tokens are never rotated: the RoPE table
covers the patch grid only and blocks receive it as an argument, so masked encoding can gather it per token.
"""

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential
from torchvision.ops import StochasticDepth

from birder_exp.layers.activations import get_activation_module
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.ffn import FFN
from birder_exp.layers.ffn import SwiGLU_FFN
from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.layers.layer_scale import LayerScale
from birder_exp.layers.masking import mask_tensor
from birder_exp.layers.moe import SoftMoE_FFN
from birder_exp.layers.patch_embed import PatchEmbed
from birder_exp.layers.patch_embed import adjust_position_embedding
from birder_exp.layers.patch_embed import hMLPStem
from birder_exp.layers.rope import RoPE
from birder_exp.layers.rope import RoPERotationType
from birder_exp.layers.rope import RoPEStyleType
from birder_exp.layers.rope import get_rope_apply_fn
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenOmissionMixin
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import TokenOmissionResultType
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import normalize_out_indices
from birder_exp.net.base import stochastic_depth_rates

logger = logging.getLogger(__name__)

_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"LayerNorm": nn.LayerNorm, "RMSNorm": nn.RMSNorm}
_MLP_LAYER_TYPES = ("FFN", "SwiGLU_FFN", "Norm_SwiGLU_FFN", "SoftMoE_FFN")
_ATTN_POOL_TYPES = ("MultiHeadAttentionPool", "EfficientProbing")


def _as_additive_mask(x: torch.Tensor, attn_mask: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """One additive float mask from a boolean (True = attend) or float mask, causal part folded in."""

    if attn_mask.dtype == torch.bool:
        if is_causal is True:
            seq_len = x.size(1)
            future = torch.ones((seq_len, seq_len), dtype=torch.bool, device=attn_mask.device).triu_(diagonal=1)
            additive = torch.zeros(
                torch.broadcast_shapes(attn_mask.shape, future.shape), dtype=x.dtype, device=attn_mask.device
            )
            additive.masked_fill_(future, float("-inf"))
            additive.masked_fill_(~attn_mask, float("-inf"))
            return additive

        additive = torch.full_like(attn_mask, float("-inf"), dtype=x.dtype)
        return additive.masked_fill_(attn_mask, 0.0)

    if is_causal is True:
        seq_len = x.size(1)
        future_bias = torch.full(
            (seq_len, seq_len), float("-inf"), dtype=attn_mask.dtype, device=attn_mask.device
        ).triu_(diagonal=1)
        return attn_mask + future_bias

    return attn_mask


class SequentialWithRope(nn.Sequential):
    """A Sequential whose blocks all take the same RoPE table."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, rope)

        return x


class RoPEAttention(nn.Module):
    """Multi-head self-attention with RoPE applied to the patch part of q and k (special tokens left as is)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_drop: float,
        proj_drop: float,
        num_special_tokens: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        rope_rot_type: RoPERotationType = "standard",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")

        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.num_special_tokens = num_special_tokens
        self.apply_rot_fn = get_rope_apply_fn(rope_rot_type)

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm: nn.Module = norm_layer(self.head_dim, eps=norm_layer_eps) if qk_norm is True else nn.Identity()
        self.k_norm: nn.Module = norm_layer(self.head_dim, eps=norm_layer_eps) if qk_norm is True else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm: nn.Module = norm_layer(dim, eps=norm_layer_eps) if attn_norm is True else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        for linear in (self.qkv, self.proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _rotate(self, t: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        n = self.num_special_tokens
        return torch.concat([t[:, :, :n, :], self.apply_rot_fn(t[:, :, n:, :], rope)], dim=2)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, is_causal: bool = False, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        B, N, C = x.size()
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self._rotate(self.q_norm(q), rope).type_as(v)
        k = self._rotate(self.k_norm(k), rope).type_as(v)

        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)  # type: ignore[no-any-return]


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with optional layer scale."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: Optional[int],
        num_special_tokens: int,
        dropout: float,
        attention_dropout: float,
        projection_dropout: float,
        drop_path: float,
        activation_layer: Callable[..., nn.Module],
        layer_scale_init_value: Optional[float] = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        mlp_layer: Callable[..., nn.Module] = FFN,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_norm: bool = False,
        rope_rot_type: RoPERotationType = "standard",
    ) -> None:
        super().__init__()
        if mlp_dim is None:
            mlp_dim = hidden_dim * 4

        self.norm1 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.attn = RoPEAttention(
            hidden_dim,
            num_heads=num_heads,
            attn_drop=attention_dropout,
            proj_drop=projection_dropout,
            num_special_tokens=num_special_tokens,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            attn_norm=attn_norm,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            rope_rot_type=rope_rot_type,
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.layer_scale_1: nn.Module = (
            LayerScale(hidden_dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )

        self.norm2 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.mlp = mlp_layer(hidden_dim, mlp_dim, act_layer=activation_layer, dropout=dropout)
        self.layer_scale_2: nn.Module = (
            LayerScale(hidden_dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        attn_out = self.attn(self.norm1(x), rope, is_causal=is_causal, attn_mask=attn_mask)
        x = x + self.drop_path(self.layer_scale_1(attn_out))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))  # type: ignore[no-any-return]


class Encoder(nn.Module):
    """Optional dropout / pre-norm (``pre_block``), then the blocks (``block``)."""

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        num_special_tokens: int,
        dropout: float,
        attention_dropout: float,
        projection_dropout: float,
        dpr: list[float],
        pre_norm: bool = False,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_norm: bool = False,
        activation_layer: Callable[..., nn.Module] = nn.GELU,
        layer_scale_init_value: Optional[float] = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        mlp_layer: Callable[..., nn.Module] = FFN,
        rope_rot_type: RoPERotationType = "standard",
        soft_moe_num_experts: Optional[int] = None,
        soft_moe_num_slots: int = 1,
    ) -> None:
        super().__init__()
        self.is_causal = False
        self.has_soft_moe = soft_moe_num_experts is not None
        self.grad_checkpointing = False
        self.grad_checkpointing_segments: Optional[int] = None
        self.grad_checkpointing_preserve_rng_state = True
        self.grad_checkpointing_use_reentrant = False

        pre_layers: list[nn.Module] = []
        if dropout > 0.0:
            pre_layers.append(nn.Dropout(dropout))
        if pre_norm is True:
            pre_layers.append(norm_layer(hidden_dim, eps=norm_layer_eps))
        self.pre_block = nn.Sequential(*pre_layers)

        layers = []
        for i in range(num_layers):
            block_mlp_layer = mlp_layer
            if soft_moe_num_experts is not None:
                # Soft MoE in the second half of the network only, dense FFN before
                if i < num_layers // 2:
                    block_mlp_layer = FFN
                else:
                    block_mlp_layer = partial(
                        mlp_layer,
                        num_experts=soft_moe_num_experts,
                        num_slots=soft_moe_num_slots,
                        norm_eps=norm_layer_eps,
                    )

            layers.append(
                EncoderBlock(
                    num_heads,
                    hidden_dim,
                    mlp_dim,
                    num_special_tokens,
                    dropout,
                    attention_dropout,
                    projection_dropout,
                    dpr[i],
                    activation_layer=activation_layer,
                    layer_scale_init_value=layer_scale_init_value,
                    norm_layer=norm_layer,
                    norm_layer_eps=norm_layer_eps,
                    mlp_layer=block_mlp_layer,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    attn_norm=attn_norm,
                    rope_rot_type=rope_rot_type,
                )
            )

        self.block = SequentialWithRope(*layers)

    def _prepare_attention_mask(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], bool]:
        """SDPA takes either a mask or is_causal: with a mask, fold causality into it."""

        if attn_mask is None:
            return (None, self.is_causal)

        return (_as_additive_mask(x, attn_mask, self.is_causal), False)

    def _checkpoint_blocks(
        self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        segments = len(self.block)
        if self.grad_checkpointing_segments is not None:
            segments = min(self.grad_checkpointing_segments, segments)

        blocks = [partial(block, rope=rope, attn_mask=attn_mask, is_causal=is_causal) for block in self.block]
        return checkpoint_sequential(  # type: ignore[no-any-return]
            blocks,  # type: ignore[arg-type]
            segments,
            x,
            use_reentrant=self.grad_checkpointing_use_reentrant,
            preserve_rng_state=self.grad_checkpointing_preserve_rng_state,
        )

    def forward(self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        if self.grad_checkpointing is True and torch.is_grad_enabled() is True:
            return self._checkpoint_blocks(x, rope, attn_mask=attn_mask, is_causal=is_causal)

        if attn_mask is None and is_causal is False:
            return self.block(x, rope)  # type: ignore[no-any-return]

        for blk in self.block:
            x = blk(x, rope, attn_mask=attn_mask, is_causal=is_causal)

        return x

    def forward_features(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        out_indices: Optional[list[int]] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> list[torch.Tensor]:
        """Outputs of the blocks in ``out_indices`` (all blocks when None)."""

        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        wanted = set(out_indices) if out_indices is not None else None
        xs = []
        for idx, blk in enumerate(self.block):
            x = blk(x, rope, attn_mask=attn_mask, is_causal=is_causal)
            if wanted is None or idx in wanted:
                xs.append(x)

        return xs

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

    def set_causal_attention(self, is_causal: bool = True) -> None:
        if is_causal is True and self.has_soft_moe is True:
            raise ValueError("SoftMoE_FFN does not support causal attention (it mixes all tokens into every slot)")

        self.is_causal = is_causal


class MAEDecoderBlock(nn.Module):
    """Decoder block for MAE-style pre-training; owns its own RoPE table for the full patch grid."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        num_special_tokens: int,
        activation_layer: Callable[..., nn.Module],
        grid_size: tuple[int, int],
        rope_grid_indexing: Literal["ij", "xy"],
        rope_grid_offset: int,
        rope_temperature: float,
        layer_scale_init_value: Optional[float] = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        mlp_layer: Callable[..., nn.Module] = FFN,
        rope_style: RoPEStyleType = "default",
        rope_rot_type: RoPERotationType = "standard",
    ) -> None:
        super().__init__()
        mlp_dim = hidden_dim * 4
        self.rope = RoPE(
            hidden_dim // num_heads,
            temperature=rope_temperature,
            grid_size=grid_size,
            grid_indexing=rope_grid_indexing,
            grid_offset=rope_grid_offset,
            rope_style=rope_style,
            rope_rot_type=rope_rot_type,
        )

        self.norm1 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.attn = RoPEAttention(
            hidden_dim,
            num_heads,
            attn_drop=0.0,
            proj_drop=0.0,
            num_special_tokens=num_special_tokens,
            rope_rot_type=rope_rot_type,
        )
        self.layer_scale_1: nn.Module = (
            LayerScale(hidden_dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )

        self.norm2 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.mlp = mlp_layer(hidden_dim, mlp_dim, act_layer=activation_layer, dropout=0.0)
        self.layer_scale_2: nn.Module = (
            LayerScale(hidden_dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.attn(self.norm1(x), self.rope.pos_embed))
        return x + self.layer_scale_2(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class RoPE_ViT(DetectorBackbone, PreTrainEncoder, MaskedTokenOmissionMixin, MaskedTokenRetentionMixin):
    block_group_regex = r"encoder\.block\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        if self.config is None:
            raise ValueError(
                f"{type(self).__name__} needs a config (patch_size, num_layers, num_heads, hidden_dim, mlp_dim, "
                "drop_path_rate); build a registered name such as 'rope_vit_b16' or pass config=..."
            )

        cfg = self.config
        missing = [
            k
            for k in ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "drop_path_rate")
            if k not in cfg
        ]
        if len(missing) > 0:
            raise ValueError(f"{type(self).__name__} config is missing required keys: {', '.join(missing)}")

        image_size = self.size
        abs_pos_embed: bool = cfg.get("abs_pos_embed", True)
        pos_embed_special_tokens: bool = cfg.get("pos_embed_special_tokens", True)
        pos_embed_interpolation_mode: Literal["bilinear", "bicubic"] = cfg.get(
            "pos_embed_interpolation_mode", "bicubic"
        )
        pos_embed_antialias: bool = cfg.get("pos_embed_antialias", False)  # Dynamic-size forward only
        patch_size: int = cfg["patch_size"]
        stem_type: Literal["patchify", "hmlp"] = cfg.get("stem_type", "patchify")
        stem_norm_layer_type: Optional[Literal["BatchNorm2d", "LayerNorm2d"]] = cfg.get("stem_norm_layer_type", None)
        num_layers: int = cfg["num_layers"]
        num_heads: int = cfg["num_heads"]
        hidden_dim: int = cfg["hidden_dim"]
        mlp_dim: int = cfg["mlp_dim"]
        layer_scale_init_value: Optional[float] = cfg.get("layer_scale_init_value", None)
        pre_norm: bool = cfg.get("pre_norm", False)
        post_norm: bool = cfg.get("post_norm", True)
        norm_after_pool: bool = cfg.get("norm_after_pool", False)
        qkv_bias: bool = cfg.get("qkv_bias", True)
        qk_norm: bool = cfg.get("qk_norm", False)
        attn_norm: bool = cfg.get("attn_norm", False)
        num_reg_tokens: int = cfg.get("num_reg_tokens", 0)
        class_token: bool = cfg.get("class_token", True)
        attn_pool_head: bool = cfg.get("attn_pool_head", False)
        attn_pool_type: str = cfg.get("attn_pool_type", "MultiHeadAttentionPool")
        attn_pool_num_heads: Optional[int] = cfg.get("attn_pool_num_heads", None)
        attn_pool_special_tokens: bool = cfg.get("attn_pool_special_tokens", False)
        attn_pool_norm_eps: float = cfg.get("attn_pool_norm_eps", 1e-5)
        attn_pool_act_layer_type: str = cfg.get("attn_pool_act_layer_type", "gelu")
        norm_layer_type: str = cfg.get("norm_layer_type", "LayerNorm")
        norm_layer_eps: float = cfg.get("norm_layer_eps", 1e-6)
        mlp_layer_type: str = cfg.get("mlp_layer_type", "FFN")
        soft_moe_num_experts: Optional[int] = cfg.get("soft_moe_num_experts", None)
        soft_moe_num_slots: int = cfg.get("soft_moe_num_slots", 1)
        act_layer_type: Optional[str] = cfg.get("act_layer_type", None)  # None: the MLP type's own activation
        out_indices: Optional[list[int]] = cfg.get("out_indices", None)
        rope_style: RoPEStyleType = cfg.get("rope_style", "default")
        rope_rot_type: RoPERotationType = cfg.get("rope_rot_type", "standard")
        rope_grid_indexing: Literal["ij", "xy"] = cfg.get("rope_grid_indexing", "ij")
        rope_grid_offset: int = cfg.get("rope_grid_offset", 0)
        rope_temperature: float = cfg.get("rope_temperature", 100.0)
        rope_shift_coords: Optional[float] = cfg.get("rope_shift_coords", None)
        rope_jitter_coords: Optional[float] = cfg.get("rope_jitter_coords", None)
        rope_rescale_coords: Optional[float] = cfg.get("rope_rescale_coords", None)
        pt_grid_size: Optional[tuple[int, int]] = cfg.get("pt_grid_size", None)
        dropout: float = cfg.get("dropout", 0.0)
        attention_dropout: float = cfg.get("attention_dropout", 0.0)
        projection_dropout: float = cfg.get("projection_dropout", 0.0)
        drop_path_rate: float = cfg["drop_path_rate"]
        drop_path_uniform: bool = cfg.get("drop_path_uniform", False)

        if pos_embed_interpolation_mode not in ("bilinear", "bicubic"):
            raise ValueError(
                f"Unknown pos_embed_interpolation_mode '{pos_embed_interpolation_mode}' (valid: bilinear, bicubic)"
            )
        if image_size[0] % patch_size != 0 or image_size[1] % patch_size != 0:
            raise ValueError(f"Input size {image_size} is not divisible by patch_size {patch_size}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")

        # Patch stem
        self.conv_proj: nn.Module
        if stem_type == "patchify":
            if stem_norm_layer_type is not None:
                raise ValueError(
                    f"stem_norm_layer_type is only supported with stem_type='hmlp' (got '{stem_norm_layer_type}')"
                )

            self.conv_proj = nn.Conv2d(
                self.input_channels,
                hidden_dim,
                kernel_size=(patch_size, patch_size),
                stride=(patch_size, patch_size),
                padding=(0, 0),
                bias=not pre_norm,
            )
        elif stem_type == "hmlp":
            if patch_size != 16:
                raise ValueError(f"The hMLP stem requires patch_size=16, got {patch_size}")

            stem_norms: dict[Optional[str], Callable[..., nn.Module]] = {
                None: LayerNorm2d,
                "LayerNorm2d": LayerNorm2d,
                "BatchNorm2d": nn.BatchNorm2d,
            }
            if stem_norm_layer_type not in stem_norms:
                raise ValueError(
                    f"Unknown stem_norm_layer_type '{stem_norm_layer_type}' (valid: None, LayerNorm2d, BatchNorm2d)"
                )
            self.conv_proj = hMLPStem(self.input_channels, hidden_dim, norm_layer=stem_norms[stem_norm_layer_type])
        else:
            raise ValueError(f"Unknown stem_type '{stem_type}' (valid: patchify, hmlp)")

        if norm_layer_type not in _NORM_LAYERS:
            raise ValueError(f"Unknown norm_layer_type '{norm_layer_type}' (valid: {', '.join(_NORM_LAYERS)})")
        norm_layer = _NORM_LAYERS[norm_layer_type]

        mlp_layer: Callable[..., nn.Module]
        act_layer: Callable[..., nn.Module]
        if mlp_layer_type == "FFN":
            mlp_layer, act_layer = FFN, nn.GELU
        elif mlp_layer_type == "SwiGLU_FFN":
            mlp_layer, act_layer = SwiGLU_FFN, nn.SiLU
        elif mlp_layer_type == "Norm_SwiGLU_FFN":
            mlp_layer, act_layer = partial(SwiGLU_FFN, norm_layer=norm_layer, norm_eps=norm_layer_eps), nn.SiLU
        elif mlp_layer_type == "SoftMoE_FFN":
            if soft_moe_num_experts is None:
                raise ValueError("soft_moe_num_experts must be set when mlp_layer_type is 'SoftMoE_FFN'")
            mlp_layer, act_layer = SoftMoE_FFN, nn.GELU
        else:
            raise ValueError(f"Unknown mlp_layer_type '{mlp_layer_type}' (valid: {', '.join(_MLP_LAYER_TYPES)})")

        if act_layer_type is not None:
            act_layer = get_activation_module(act_layer_type)

        self.abs_pos_embed = abs_pos_embed
        self.pos_embed_special_tokens = pos_embed_special_tokens
        self.pos_embed_interpolation_mode = pos_embed_interpolation_mode
        self.pos_embed_antialias = pos_embed_antialias
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.layer_scale_init_value = layer_scale_init_value
        self.num_reg_tokens = num_reg_tokens
        self.attn_pool_special_tokens = attn_pool_special_tokens
        self.norm_layer = norm_layer
        self.norm_layer_eps = norm_layer_eps
        self.decoder_mlp_layer = FFN if mlp_layer_type == "SoftMoE_FFN" else mlp_layer
        self.act_layer = act_layer
        self.out_indices = normalize_out_indices(out_indices, num_layers)
        self.rope_rot_type = rope_rot_type
        self.rope_style = rope_style
        self.rope_grid_indexing = rope_grid_indexing
        self.rope_grid_offset = rope_grid_offset
        self.rope_temperature = rope_temperature
        self.pt_grid_size = (pt_grid_size[0], pt_grid_size[1]) if pt_grid_size is not None else None  # JSON: list
        dpr = stochastic_depth_rates(drop_path_rate, num_layers, constant=drop_path_uniform)

        self.patch_embed = PatchEmbed()
        grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        seq_length = grid_size[0] * grid_size[1]

        # Special tokens, order [REG..., CLS]
        self.num_special_tokens = 0
        self.class_token: Optional[nn.Parameter] = None
        if class_token is True:
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            self.num_special_tokens += 1
            if pos_embed_special_tokens is True:
                seq_length += 1

        self.reg_tokens: Optional[nn.Parameter] = None
        if self.num_reg_tokens > 0:
            self.reg_tokens = nn.Parameter(torch.zeros(1, self.num_reg_tokens, hidden_dim))
            self.num_special_tokens += self.num_reg_tokens
            if pos_embed_special_tokens is True:
                seq_length += self.num_reg_tokens

        self.pos_embedding: Optional[nn.Parameter] = None
        if self.abs_pos_embed is True:
            self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))

        self.rope = RoPE(
            hidden_dim // num_heads,
            temperature=self.rope_temperature,
            grid_size=grid_size,
            grid_indexing=rope_grid_indexing,
            grid_offset=rope_grid_offset,
            pt_grid_size=self.pt_grid_size,
            rope_style=rope_style,
            rope_rot_type=rope_rot_type,
            shift_coords=rope_shift_coords,
            jitter_coords=rope_jitter_coords,
            rescale_coords=rope_rescale_coords,
        )

        self.encoder = Encoder(
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            self.num_special_tokens,
            dropout,
            attention_dropout,
            projection_dropout,
            dpr,
            pre_norm=pre_norm,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            attn_norm=attn_norm,
            activation_layer=act_layer,
            layer_scale_init_value=layer_scale_init_value,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            mlp_layer=mlp_layer,
            rope_rot_type=rope_rot_type,
            soft_moe_num_experts=soft_moe_num_experts,
            soft_moe_num_slots=soft_moe_num_slots,
        )

        # Post-norm on the tokens, or (norm_after_pool) on the pooled embedding
        self.norm: nn.Module = nn.Identity()
        self.embedding_norm: nn.Module = nn.Identity()
        if post_norm is True and norm_after_pool is False:
            self.norm = norm_layer(hidden_dim, eps=norm_layer_eps)
        if post_norm is True and norm_after_pool is True:
            self.embedding_norm = norm_layer(hidden_dim, eps=norm_layer_eps)

        self.attn_pool: Optional[nn.Module] = None
        if attn_pool_head is True:
            attn_pool_cls: type[MultiHeadAttentionPool] | type[EfficientProbing]
            if attn_pool_type == "MultiHeadAttentionPool":
                attn_pool_cls = MultiHeadAttentionPool
                if attn_pool_num_heads is None:
                    attn_pool_num_heads = num_heads
            elif attn_pool_type == "EfficientProbing":
                attn_pool_cls = EfficientProbing
                if attn_pool_num_heads is None:
                    attn_pool_num_heads = 1
            else:
                raise ValueError(f"Unknown attn_pool_type '{attn_pool_type}' (valid: {', '.join(_ATTN_POOL_TYPES)})")

            self.attn_pool = attn_pool_cls(
                hidden_dim,
                attn_pool_num_heads,
                mlp_dim,
                qkv_bias=True,
                norm_eps=attn_pool_norm_eps,
                activation_layer=get_activation_module(attn_pool_act_layer_type),
            )

        num_return_stages = len(self.out_indices) if self.out_indices is not None else 1
        self.return_stages = [f"stage{idx + 1}" for idx in range(num_return_stages)]
        self.return_channels = [hidden_dim] * num_return_stages
        self.embedding_size = hidden_dim
        self.classifier = self.create_classifier()

        self.max_stride = patch_size
        self.stem_stride = patch_size
        self.stem_width = hidden_dim
        self.feature_dim = hidden_dim
        self.decoder_block = self._make_decoder_block(grid_size)

        # Weight initialization
        if isinstance(self.conv_proj, nn.Conv2d):
            fan_in = self.conv_proj.in_channels * self.conv_proj.kernel_size[0] * self.conv_proj.kernel_size[1]
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
            if self.conv_proj.bias is not None:
                nn.init.zeros_(self.conv_proj.bias)

        if isinstance(self.classifier, nn.Linear):
            nn.init.zeros_(self.classifier.weight)
            if self.classifier.bias is not None:
                nn.init.zeros_(self.classifier.bias)

    def _make_decoder_block(self, grid_size: tuple[int, int]) -> Callable[[int], nn.Module]:
        """MAE decoder block factory (16 heads) matching this encoder's tokens and RoPE options."""

        return partial(
            MAEDecoderBlock,
            16,
            num_special_tokens=self.num_special_tokens,
            activation_layer=self.act_layer,
            grid_size=grid_size,
            rope_grid_indexing=self.rope_grid_indexing,
            rope_grid_offset=self.rope_grid_offset,
            rope_temperature=self.rope_temperature,
            layer_scale_init_value=self.layer_scale_init_value,
            norm_layer=self.norm_layer,
            norm_layer_eps=self.norm_layer_eps,
            mlp_layer=self.decoder_mlp_layer,
            rope_style=self.rope_style,
            rope_rot_type=self.rope_rot_type,
        )

    def _get_input_conv(self) -> nn.Conv2d:
        if isinstance(self.conv_proj, nn.Conv2d):
            return self.conv_proj

        return self.conv_proj[0]  # type: ignore[index,no-any-return]

    def _get_pos_embed(self, H: int, W: int) -> Optional[torch.Tensor]:
        if self.pos_embedding is None:
            return None
        if self.dynamic_size is False or tuple(self.size) == (H, W):
            return self.pos_embedding

        return adjust_position_embedding(
            self.pos_embedding,
            (self.size[0] // self.patch_size, self.size[1] // self.patch_size),
            (H // self.patch_size, W // self.patch_size),
            self.num_special_tokens if self.pos_embed_special_tokens is True else 0,
            interpolation_mode=self.pos_embed_interpolation_mode,
            antialias=self.pos_embed_antialias,
        )

    def _get_rope_embed(self, H: int, W: int) -> torch.Tensor:
        if self.dynamic_size is False:
            return self.rope.get_pos_embed(self.rope.grid_size)

        return self.rope.get_pos_embed((H // self.patch_size, W // self.patch_size))

    def _special_tokens(self, batch_size: int) -> list[torch.Tensor]:
        tokens: list[torch.Tensor] = []
        if self.reg_tokens is not None:
            tokens.append(self.reg_tokens.expand(batch_size, -1, -1))
        if self.class_token is not None:
            tokens.append(self.class_token.expand(batch_size, -1, -1))

        return tokens

    def _embed_tokens(self, x: torch.Tensor, pos_embedding: Optional[torch.Tensor]) -> torch.Tensor:
        """Patch tokens -> [REG..., CLS, PATCH...] with the absolute position embedding added."""

        if pos_embedding is not None and self.pos_embed_special_tokens is False:
            x = x + pos_embedding

        special_tokens = self._special_tokens(x.size(0))
        if len(special_tokens) > 0:
            x = torch.concat([*special_tokens, x], dim=1)

        if pos_embedding is not None and self.pos_embed_special_tokens is True:
            x = x + pos_embedding

        return x

    def _tokens_to_map(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x[:, self.num_special_tokens :].permute(0, 2, 1)
        B, C, _ = x.size()
        return x.reshape(B, C, H // self.patch_size, W // self.patch_size)

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

        if freeze_classifier is False:
            for param in self.classifier.parameters():
                param.requires_grad_(True)

        if unfreeze_features is True:
            for module in (self.norm, self.embedding_norm, self.attn_pool):
                if module is not None:
                    for param in module.parameters():
                        param.requires_grad_(True)

    def set_grad_checkpointing(
        self,
        enable: bool = True,
        *,
        segments: Optional[int] = None,
        preserve_rng_state: bool = True,
        use_reentrant: bool = False,
    ) -> None:
        self.encoder.set_grad_checkpointing(
            enable=enable, segments=segments, preserve_rng_state=preserve_rng_state, use_reentrant=use_reentrant
        )

    def set_causal_attention(self, is_causal: bool = True) -> None:
        self.encoder.set_causal_attention(is_causal)

    def strip_for_forward_features(self) -> None:
        super().strip_for_forward_features()
        self.embedding_norm = nn.Identity()
        self.attn_pool = None

    def strip_for_detection_features(self) -> None:
        super().strip_for_detection_features()
        self.norm = nn.Identity()
        self.embedding_norm = nn.Identity()
        self.attn_pool = None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            if self.attn_pool_special_tokens is False:
                x = x[:, self.num_special_tokens :]

            return self.attn_pool(x)[:, 0]  # type: ignore[no-any-return]

        if self.class_token is None:
            return x[:, self.num_special_tokens :].mean(dim=1)

        return x[:, self.num_reg_tokens]

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))
        x = self._embed_tokens(x, self._get_pos_embed(H, W))

        rope = self._get_rope_embed(H, W)
        if self.out_indices is None:
            xs = [self.encoder(x, rope)]
        else:
            xs = self.encoder.forward_features(x, rope, out_indices=self.out_indices)

        return {
            stage_name: self._tokens_to_map(stage_x, H, W)
            for stage_name, stage_x in zip(self.return_stages, xs, strict=True)
        }

    def freeze_stages(self, up_to_stage: int) -> None:
        for param in self.conv_proj.parameters():
            param.requires_grad_(False)
        if self.pos_embedding is not None:
            self.pos_embedding.requires_grad_(False)

        if up_to_stage <= 0:
            return

        for param in self.encoder.pre_block.parameters():
            param.requires_grad_(False)

        stage_ends = [self.num_layers - 1] if self.out_indices is None else sorted(set(self.out_indices))
        last_block = stage_ends[min(up_to_stage, len(stage_ends)) - 1]
        for block in self.encoder.block[: last_block + 1]:
            for param in block.parameters():
                param.requires_grad_(False)

    def masked_encoding_omission(
        self,
        x: torch.Tensor,
        ids_keep: Optional[torch.Tensor] = None,
        return_all_features: bool = False,
        return_keys: Literal["all", "tokens", "embedding"] = "tokens",
    ) -> TokenOmissionResultType:
        """Encode only the kept patches (``ids_keep``, (B, K) patch indices); special tokens always kept.

        ``tokens`` is (B, special + K, D), or (B, special + K, D, num_layers) with ``return_all_features``.
        """

        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))

        # Patch part of the position embedding before masking; the special-token part is added to those tokens
        pos_embedding = self._get_pos_embed(H, W)
        if pos_embedding is not None:
            if self.pos_embed_special_tokens is True:
                x = x + pos_embedding[:, self.num_special_tokens :, :]
            else:
                x = x + pos_embedding

        rope = self._get_rope_embed(H, W)
        if ids_keep is not None:
            x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, x.size(2)))
            rope_dim = rope.size(1)
            rope = rope.unsqueeze(0).expand(x.size(0), -1, -1)
            rope = torch.gather(rope, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, rope_dim))

        special_tokens: list[torch.Tensor] = []
        special_pos = pos_embedding if self.pos_embed_special_tokens is True else None
        if self.reg_tokens is not None:
            reg_tokens: torch.Tensor = self.reg_tokens
            if special_pos is not None:
                reg_tokens = reg_tokens + special_pos[:, 0 : self.num_reg_tokens, :]
            special_tokens.append(reg_tokens.expand(x.size(0), -1, -1))

        if self.class_token is not None:
            cls_token: torch.Tensor = self.class_token
            if special_pos is not None:
                n = self.num_reg_tokens
                cls_token = cls_token + special_pos[:, n : n + 1, :]
            special_tokens.append(cls_token.expand(x.size(0), -1, -1))

        if len(special_tokens) > 0:
            x = torch.concat([*special_tokens, x], dim=1)

        if return_all_features is True:
            xs = self.encoder.forward_features(x, rope)
            xs[-1] = self.norm(xs[-1])
            x = torch.stack(xs, dim=-1)
        else:
            x = self.norm(self.encoder(x, rope))

        result: TokenOmissionResultType = {}
        if return_keys in ("all", "tokens"):
            result["tokens"] = x
        if return_keys in ("all", "embedding"):
            if return_all_features is True:
                x = x[..., -1]
            result["embedding"] = self.embedding_from_features(x)

        return result

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Encode with masked patches replaced in place (by ``mask_token`` or zeros); ``mask`` is (B, H*W / p^2).

        ``features`` is the (B, D, H/p, W/p) patch map.
        """

        H, W = x.shape[-2:]
        x = self.conv_proj(x)
        x = mask_tensor(x, mask, mask_token=mask_token, patch_factor=self.max_stride // self.stem_stride)
        x = self._embed_tokens(self.patch_embed(x), self._get_pos_embed(H, W))
        x = self.norm(self.encoder(x, self._get_rope_embed(H, W)))

        result: TokenRetentionResultType = {}
        if return_keys in ("all", "features"):
            result["features"] = self._tokens_to_map(x, H, W)
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.embedding_from_features(x)

        return result

    def forward_features(
        self, x: torch.Tensor, return_input_embedding: bool = False, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """All tokens after the encoder and post-norm, (B, special + H*W / p^2, D).

        With ``return_input_embedding`` the pre-encoder tokens (no position embedding) are stacked on a last
        dim: (B, N, D, 2).
        """

        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))
        patch_embedding = x
        x = self._embed_tokens(x, self._get_pos_embed(H, W))
        x = self.encoder(x, self._get_rope_embed(H, W), attn_mask=attn_mask)
        x = self.norm(x)

        if return_input_embedding is True:
            special_tokens = self._special_tokens(patch_embedding.size(0))
            input_embedding = torch.concat([*special_tokens, patch_embedding], dim=1)
            return torch.stack([input_embedding, x], dim=-1)

        return x

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        if include_special_tokens is False:
            return features[:, self.num_special_tokens :]

        return features

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedding_norm(self._pool(features))  # type: ignore[no-any-return]

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Resize the position embedding (bicubic, antialiased) and rebuild the RoPE table for a new resolution."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return
        if new_size[0] % self.patch_size != 0 or new_size[1] % self.patch_size != 0:
            raise ValueError(f"New size {new_size} is not divisible by patch_size {self.patch_size}")

        old_size = self.size
        super().adjust_size(new_size)

        if self.pos_embedding is not None:
            num_prefix_tokens = self.num_special_tokens if self.pos_embed_special_tokens is True else 0
            with torch.no_grad():
                pos_embedding = adjust_position_embedding(
                    self.pos_embedding,
                    (old_size[0] // self.patch_size, old_size[1] // self.patch_size),
                    (new_size[0] // self.patch_size, new_size[1] // self.patch_size),
                    num_prefix_tokens,
                    interpolation_mode=self.pos_embed_interpolation_mode,
                )

            self.pos_embedding = nn.Parameter(pos_embedding, requires_grad=self.pos_embedding.requires_grad)

        grid_size = (new_size[0] // self.patch_size, new_size[1] // self.patch_size)
        self.rope.set_grid_size(grid_size)
        self.decoder_block = self._make_decoder_block(grid_size)
