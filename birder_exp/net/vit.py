"""ViT, Birder-exact: the plain Vision Transformer and its many config variants.

Covers "An Image is Worth 16x16 Words" (https://arxiv.org/abs/2010.11929), registers
("Vision Transformers Need Registers", https://arxiv.org/abs/2309.16588), DeiT III
(https://arxiv.org/abs/2204.07118), SoViT shapes (https://arxiv.org/abs/2305.13035), Soft MoE
(https://arxiv.org/abs/2308.00951) and the hMLP stem ("Three things everyone should know about Vision
Transformers", https://arxiv.org/abs/2203.09795).

Module and attribute names follow Birder's, so its checkpoints load with ``strict=True``. The special tokens sit
in front of the patch tokens in the order ``[REG..., CLS, PATCH...]``.

``PatchEmbed``, ``hMLPStem`` and ``adjust_position_embedding`` live in :mod:`birder_exp.layers.patch_embed` and
are re-exported here, where Birder's sibling families (RoPE ViT, DeiT, ...) import them from.
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
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenOmissionMixin
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import TokenOmissionResultType
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import normalize_out_indices
from birder_exp.net.base import stochastic_depth_rates

__all__ = [
    "Attention",
    "Encoder",
    "EncoderBlock",
    "PatchEmbed",
    "ViT",
    "adjust_position_embedding",
    "apply_attention_mask",
    "hMLPStem",
]

logger = logging.getLogger(__name__)


def apply_attention_mask(attn: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply an SDPA-style mask to explicit attention scores (bool: True attends, float: additive)."""

    if attn_mask is None:
        return attn
    if attn_mask.dtype == torch.bool:
        return attn.masked_fill(attn_mask.logical_not(), float("-inf"))

    return attn + attn_mask


class Attention(nn.Module):
    """Multi-head self-attention; fused SDPA unless the attention weights are asked for."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_drop: float,
        proj_drop: float,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads})")

        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim, eps=norm_layer_eps) if qk_norm is True else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, eps=norm_layer_eps) if qk_norm is True else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, eps=norm_layer_eps) if attn_norm is True else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        for linear in (self.qkv, self.proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        average_attn_weights: bool = False,
        is_causal: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, N, C) -> ((B, N, C), weights): weights are (B, heads, N, N), or (B, N, N) when averaged,
        and only computed when ``need_weights`` (otherwise None). Bool masks mark allowed positions."""

        B, N, C = x.size()
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q_norm(q)
        k = self.k_norm(k)

        weights: Optional[torch.Tensor] = None
        if need_weights is True:
            scores = (q @ k.transpose(-2, -1)) * self.scale
            if is_causal is True:
                scores = scores + torch.full((N, N), float("-inf"), dtype=scores.dtype, device=scores.device).triu_(
                    diagonal=1
                )

            probs = apply_attention_mask(scores, attn_mask).softmax(dim=-1)
            weights = probs.mean(dim=1) if average_attn_weights is True else probs
            x = self.attn_drop(probs) @ v
        else:
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
        x = self.proj(self.norm(x))
        return (self.proj_drop(x), weights)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each optionally layer-scaled."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: Optional[int],
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
    ) -> None:
        super().__init__()
        self.need_attn = False
        if mlp_dim is None:
            mlp_dim = 4 * hidden_dim

        self.norm1 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.attn = Attention(
            hidden_dim,
            num_heads=num_heads,
            attn_drop=attention_dropout,
            proj_drop=projection_dropout,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            attn_norm=attn_norm,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.layer_scale_1: nn.Module
        self.layer_scale_2: nn.Module
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale(hidden_dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = nn.Identity()

        self.norm2 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.mlp = mlp_layer(hidden_dim, mlp_dim, act_layer=activation_layer, dropout=dropout)
        if layer_scale_init_value is not None:
            self.layer_scale_2 = LayerScale(hidden_dim, layer_scale_init_value)
        else:
            self.layer_scale_2 = nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        attn_out, _ = self.attn(
            self.norm1(x),
            need_weights=self.need_attn,
            average_attn_weights=False,
            is_causal=is_causal,
            attn_mask=attn_mask,
        )
        x = x + self.drop_path(self.layer_scale_1(attn_out))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))

    def set_need_attn(self, need_attn: bool = True) -> None:
        self.need_attn = need_attn


class Encoder(nn.Module):
    """Optional input dropout / pre-norm (``pre_block``) followed by the stack of blocks (``block``).

    With Soft MoE, the second half of the blocks swap their FFN for a ``SoftMoE_FFN``.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
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
        soft_moe_num_experts: Optional[int] = None,
        soft_moe_num_slots: int = 1,
    ) -> None:
        super().__init__()
        if len(dpr) != num_layers:
            raise ValueError(f"Encoder: dpr needs one drop-path rate per layer ({num_layers}), got {len(dpr)}")

        self.need_attn = False
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

        moe_mlp_layer: Optional[Callable[..., nn.Module]] = None
        if soft_moe_num_experts is not None:
            moe_mlp_layer = partial(
                mlp_layer, num_experts=soft_moe_num_experts, num_slots=soft_moe_num_slots, norm_eps=norm_layer_eps
            )

        blocks = []
        for idx in range(num_layers):
            block_mlp_layer = mlp_layer
            if moe_mlp_layer is not None:
                block_mlp_layer = moe_mlp_layer if idx >= num_layers // 2 else FFN

            blocks.append(
                EncoderBlock(
                    num_heads,
                    hidden_dim,
                    mlp_dim,
                    dropout,
                    attention_dropout,
                    projection_dropout,
                    dpr[idx],
                    activation_layer=activation_layer,
                    layer_scale_init_value=layer_scale_init_value,
                    norm_layer=norm_layer,
                    norm_layer_eps=norm_layer_eps,
                    mlp_layer=block_mlp_layer,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    attn_norm=attn_norm,
                )
            )

        self.block = nn.Sequential(*blocks)

    def _prepare_attention_mask(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], bool]:
        """Fold causality into the mask when both are present, so every block sees one mask and no flag.

        Returns the mask the blocks get and whether they should still apply their own causal mask.
        """

        if attn_mask is None:
            return (None, self.is_causal)

        N = x.size(1)
        if attn_mask.dtype == torch.bool:
            if self.need_attn is True:
                # Explicit attention keeps boolean masks (weights come out as probabilities either way)
                if self.is_causal is True:
                    attn_mask = attn_mask & torch.ones((N, N), dtype=torch.bool, device=attn_mask.device).tril_()
                return (attn_mask, False)

            blocked = attn_mask.logical_not()
            if self.is_causal is True:
                future = torch.ones((N, N), dtype=torch.bool, device=attn_mask.device).triu_(diagonal=1)
                blocked = blocked | future

            additive = torch.zeros(blocked.shape, dtype=x.dtype, device=attn_mask.device)
            return (additive.masked_fill_(blocked, float("-inf")), False)

        if self.is_causal is True:
            future = torch.full((N, N), float("-inf"), dtype=attn_mask.dtype, device=attn_mask.device)
            attn_mask = attn_mask + future.triu_(diagonal=1)

        return (attn_mask, False)

    def _checkpoint_blocks(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        num_blocks = len(self.block)
        segments = num_blocks if self.grad_checkpointing_segments is None else self.grad_checkpointing_segments
        segments = min(segments, num_blocks)
        functions: Any = self.block
        if attn_mask is not None or is_causal is True:
            functions = tuple(partial(blk, attn_mask=attn_mask, is_causal=is_causal) for blk in self.block)

        return checkpoint_sequential(  # type: ignore[no-any-return]
            functions,
            segments,
            x,
            use_reentrant=self.grad_checkpointing_use_reentrant,
            preserve_rng_state=self.grad_checkpointing_preserve_rng_state,
        )

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            return self._checkpoint_blocks(x, attn_mask=attn_mask, is_causal=is_causal)

        if attn_mask is None and is_causal is False:
            return self.block(x)  # type: ignore[no-any-return]

        for blk in self.block:
            x = blk(x, attn_mask=attn_mask, is_causal=is_causal)

        return x

    def forward_features(
        self, x: torch.Tensor, out_indices: Optional[list[int]] = None, attn_mask: Optional[torch.Tensor] = None
    ) -> list[torch.Tensor]:
        """Outputs of the blocks listed in ``out_indices`` (every block when None)."""

        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        wanted = set(out_indices) if out_indices is not None else None
        outputs = []
        for idx, blk in enumerate(self.block):
            x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
            if wanted is None or idx in wanted:
                outputs.append(x)

        return outputs

    def set_need_attn(self, need_attn: bool = True) -> None:
        if need_attn is True and self.grad_checkpointing is True:
            raise ValueError("Attention weights cannot be returned when gradient checkpointing is enabled")

        self.need_attn = need_attn
        for blk in self.block:
            blk.set_need_attn(need_attn)  # type: ignore[operator]

    def set_grad_checkpointing(
        self,
        enable: bool = True,
        *,
        segments: Optional[int] = None,
        preserve_rng_state: bool = True,
        use_reentrant: bool = False,
    ) -> None:
        if enable is True and self.need_attn is True:
            raise ValueError("Gradient checkpointing cannot be enabled when attention weights are returned")
        if segments is not None and segments < 1:
            raise ValueError(f"Gradient checkpointing segments must be a positive int or None, got {segments}")

        logger.debug(
            f"Gradient checkpointing {'on' if enable else 'off'}: segments={segments}, "
            f"preserve_rng_state={preserve_rng_state}, use_reentrant={use_reentrant}"
        )
        self.grad_checkpointing = enable
        self.grad_checkpointing_segments = segments
        self.grad_checkpointing_preserve_rng_state = preserve_rng_state
        self.grad_checkpointing_use_reentrant = use_reentrant

    def set_causal_attention(self, is_causal: bool = True) -> None:
        if is_causal is True and self.has_soft_moe is True:
            raise ValueError("SoftMoE_FFN does not support causal attention")

        self.is_causal = is_causal


_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"LayerNorm": nn.LayerNorm, "RMSNorm": nn.RMSNorm}
_STEM_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"BatchNorm2d": nn.BatchNorm2d, "LayerNorm2d": LayerNorm2d}
_ATTN_POOLS: dict[str, tuple[type[nn.Module], Optional[int]]] = {
    # type -> (class, default number of heads; None means the encoder's)
    "MultiHeadAttentionPool": (MultiHeadAttentionPool, None),
    "EfficientProbing": (EfficientProbing, 1),
}


def _choice(what: str, value: Any, table: dict[str, Any]) -> Any:
    if value not in table:
        raise ValueError(f"ViT: unknown {what} '{value}' (valid: {', '.join(table)})")

    return table[value]


def _mlp_layer(
    mlp_layer_type: str, norm_layer: Callable[..., nn.Module], norm_layer_eps: float
) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    """The block FFN and its default activation."""

    if mlp_layer_type == "FFN":
        return (FFN, nn.GELU)
    if mlp_layer_type == "SwiGLU_FFN":
        return (SwiGLU_FFN, nn.SiLU)
    if mlp_layer_type == "Norm_SwiGLU_FFN":
        return (partial(SwiGLU_FFN, norm_layer=norm_layer, norm_eps=norm_layer_eps), nn.SiLU)
    if mlp_layer_type == "SoftMoE_FFN":
        return (SoftMoE_FFN, nn.GELU)

    raise ValueError(
        f"ViT: unknown mlp_layer_type '{mlp_layer_type}' (valid: FFN, SwiGLU_FFN, Norm_SwiGLU_FFN, SoftMoE_FFN)"
    )


class ViT(DetectorBackbone, PreTrainEncoder, MaskedTokenOmissionMixin, MaskedTokenRetentionMixin):
    """Vision Transformer; every variant is a config (see catalogue/vit.json).

    Config keys (defaults in brackets): patch_size, num_layers, num_heads, hidden_dim, mlp_dim, drop_path_rate;
    abs_pos_embed [True], pos_embed_special_tokens [True], pos_embed_interpolation_mode [bicubic],
    pos_embed_antialias [False], stem_type [patchify|hmlp], stem_norm_layer_type [None], layer_scale_init_value,
    pre_norm [False], post_norm [True], norm_after_pool [False], qkv_bias [True], qk_norm [False],
    attn_norm [False], num_reg_tokens [0], class_token [True], attn_pool_head [False], attn_pool_type,
    attn_pool_num_heads, attn_pool_special_tokens [False], attn_pool_norm_eps [1e-5], attn_pool_act_layer_type
    [gelu], norm_layer_type [LayerNorm|RMSNorm], norm_layer_eps [1e-6], mlp_layer_type [FFN], soft_moe_num_experts,
    soft_moe_num_slots [1], act_layer_type, out_indices, dropout, attention_dropout, projection_dropout,
    drop_path_uniform [False].
    """

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
            raise ValueError("ViT needs a config (patch_size, num_layers, num_heads, hidden_dim, mlp_dim, ...)")

        cfg = self.config
        missing = [
            key
            for key in ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "drop_path_rate")
            if key not in cfg
        ]
        if len(missing) > 0:
            raise ValueError(f"ViT config is missing required keys: {', '.join(missing)}")

        patch_size: int = cfg["patch_size"]
        num_layers: int = cfg["num_layers"]
        num_heads: int = cfg["num_heads"]
        hidden_dim: int = cfg["hidden_dim"]
        mlp_dim: int = cfg["mlp_dim"]
        pre_norm: bool = cfg.get("pre_norm", False)
        post_norm: bool = cfg.get("post_norm", True)
        norm_after_pool: bool = cfg.get("norm_after_pool", False)
        class_token: bool = cfg.get("class_token", True)
        norm_layer_eps: float = cfg.get("norm_layer_eps", 1e-6)
        mlp_layer_type: str = cfg.get("mlp_layer_type", "FFN")
        soft_moe_num_experts: Optional[int] = cfg.get("soft_moe_num_experts", None)
        act_layer_type: Optional[str] = cfg.get("act_layer_type", None)

        self.abs_pos_embed: bool = cfg.get("abs_pos_embed", True)
        self.pos_embed_special_tokens: bool = cfg.get("pos_embed_special_tokens", True)
        self.pos_embed_interpolation_mode: Literal["bilinear", "bicubic"] = cfg.get(
            "pos_embed_interpolation_mode", "bicubic"
        )
        self.pos_embed_antialias: bool = cfg.get("pos_embed_antialias", False)  # Dynamic-size forward only
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_reg_tokens: int = cfg.get("num_reg_tokens", 0)
        self.attn_pool_special_tokens: bool = cfg.get("attn_pool_special_tokens", False)
        self.out_indices = normalize_out_indices(cfg.get("out_indices", None), num_layers)

        if self.pos_embed_interpolation_mode not in ("bilinear", "bicubic"):
            raise ValueError(
                f"ViT: unknown pos_embed_interpolation_mode '{self.pos_embed_interpolation_mode}' "
                "(valid: bilinear, bicubic)"
            )
        if self.size[0] % patch_size != 0 or self.size[1] % patch_size != 0:
            raise ValueError(f"ViT: input size {self.size} must be divisible by patch_size {patch_size}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"ViT: hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if (soft_moe_num_experts is None) != (mlp_layer_type != "SoftMoE_FFN"):
            raise ValueError("ViT: soft_moe_num_experts must be set exactly when mlp_layer_type is 'SoftMoE_FFN'")

        norm_layer = _choice("norm_layer_type", cfg.get("norm_layer_type", "LayerNorm"), _NORM_LAYERS)
        mlp_layer, act_layer = _mlp_layer(mlp_layer_type, norm_layer, norm_layer_eps)
        if act_layer_type is not None:
            act_layer = get_activation_module(act_layer_type)

        # Stem: patchify convolution (no bias under pre-norm, as in CLIP) or hierarchical MLP
        self.conv_proj = self._build_stem(
            cfg.get("stem_type", "patchify"), cfg.get("stem_norm_layer_type", None), patch_size, hidden_dim, pre_norm
        )
        self.patch_embed = PatchEmbed()

        seq_length = (self.size[0] // patch_size) * (self.size[1] // patch_size)
        self.num_special_tokens = 0
        self.class_token: Optional[nn.Parameter] = None
        self.reg_tokens: Optional[nn.Parameter] = None
        if class_token is True:
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            self.num_special_tokens += 1
        if self.num_reg_tokens > 0:
            self.reg_tokens = nn.Parameter(torch.zeros(1, self.num_reg_tokens, hidden_dim))
            self.num_special_tokens += self.num_reg_tokens
        if self.pos_embed_special_tokens is True:
            seq_length += self.num_special_tokens

        self.pos_embedding: Optional[nn.Parameter] = None
        if self.abs_pos_embed is True:
            self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))

        dpr = stochastic_depth_rates(cfg["drop_path_rate"], num_layers, constant=cfg.get("drop_path_uniform", False))
        self.encoder = Encoder(
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            cfg.get("dropout", 0.0),
            cfg.get("attention_dropout", 0.0),
            cfg.get("projection_dropout", 0.0),
            dpr,
            pre_norm=pre_norm,
            qkv_bias=cfg.get("qkv_bias", True),
            qk_norm=cfg.get("qk_norm", False),
            attn_norm=cfg.get("attn_norm", False),
            activation_layer=act_layer,
            layer_scale_init_value=cfg.get("layer_scale_init_value", None),
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            mlp_layer=mlp_layer,
            soft_moe_num_experts=soft_moe_num_experts,
            soft_moe_num_slots=cfg.get("soft_moe_num_slots", 1),
        )

        # Final norm: on the token sequence (default), or on the pooled embedding ("norm after pool")
        self.norm: nn.Module = nn.Identity()
        self.embedding_norm: nn.Module = nn.Identity()
        if post_norm is True and norm_after_pool is False:
            self.norm = norm_layer(hidden_dim, eps=norm_layer_eps)
        if post_norm is True and norm_after_pool is True:
            self.embedding_norm = norm_layer(hidden_dim, eps=norm_layer_eps)

        self.attn_pool: Optional[nn.Module] = None
        if cfg.get("attn_pool_head", False) is True:
            pool_cls, default_heads = _choice(
                "attn_pool_type", cfg.get("attn_pool_type", "MultiHeadAttentionPool"), _ATTN_POOLS
            )
            pool_heads: Optional[int] = cfg.get("attn_pool_num_heads", None)
            if pool_heads is None:
                pool_heads = default_heads if default_heads is not None else num_heads

            self.attn_pool = pool_cls(
                hidden_dim,
                pool_heads,
                mlp_dim,
                qkv_bias=True,
                norm_eps=cfg.get("attn_pool_norm_eps", 1e-5),
                activation_layer=get_activation_module(cfg.get("attn_pool_act_layer_type", "gelu")),
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
        self.decoder_block = partial(
            EncoderBlock,
            16,
            mlp_dim=None,
            dropout=0.0,
            attention_dropout=0.0,
            projection_dropout=0.0,
            drop_path=0.0,
            activation_layer=act_layer,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            mlp_layer=FFN if mlp_layer_type == "SoftMoE_FFN" else mlp_layer,
        )

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

    def _build_stem(
        self,
        stem_type: str,
        stem_norm_layer_type: Optional[str],
        patch_size: int,
        hidden_dim: int,
        pre_norm: bool,
    ) -> nn.Module:
        if stem_type == "patchify":
            if stem_norm_layer_type is not None:
                raise ValueError("ViT: stem_norm_layer_type is only supported with stem_type='hmlp'")

            return nn.Conv2d(
                self.input_channels,
                hidden_dim,
                kernel_size=(patch_size, patch_size),
                stride=(patch_size, patch_size),
                padding=(0, 0),
                bias=not pre_norm,
            )

        if stem_type == "hmlp":
            if patch_size != 16:
                raise ValueError(f"ViT: the hMLP stem requires patch_size=16, got {patch_size}")
            if stem_norm_layer_type is None:
                return hMLPStem(self.input_channels, hidden_dim)

            stem_norm_layer = _choice("stem_norm_layer_type", stem_norm_layer_type, _STEM_NORM_LAYERS)
            return hMLPStem(self.input_channels, hidden_dim, norm_layer=stem_norm_layer)

        raise ValueError(f"ViT: unknown stem_type '{stem_type}' (valid: patchify, hmlp)")

    def _get_input_conv(self) -> nn.Conv2d:
        if isinstance(self.conv_proj, nn.Conv2d):
            return self.conv_proj

        return self.conv_proj[0]  # type: ignore[index,no-any-return]

    def _get_pos_embed(self, H: int, W: int) -> Optional[torch.Tensor]:
        """The position embedding for an (H, W) input: resized on the fly only under dynamic size."""

        if self.pos_embedding is None:
            return None
        if self.dynamic_size is False or (self.size[0] == H and self.size[1] == W):
            return self.pos_embedding

        return adjust_position_embedding(
            self.pos_embedding,
            (self.size[0] // self.patch_size, self.size[1] // self.patch_size),
            (H // self.patch_size, W // self.patch_size),
            self.num_special_tokens if self.pos_embed_special_tokens is True else 0,
            interpolation_mode=self.pos_embed_interpolation_mode,
            antialias=self.pos_embed_antialias,
        )

    def _special_tokens(self, batch_size: int) -> list[torch.Tensor]:
        """The special tokens of a batch, in sequence order: registers, then the class token."""

        tokens: list[torch.Tensor] = []
        if self.reg_tokens is not None:
            tokens.append(self.reg_tokens.expand(batch_size, -1, -1))
        if self.class_token is not None:
            tokens.append(self.class_token.expand(batch_size, -1, -1))

        return tokens

    def _embed_tokens(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Patch tokens (B, L, D) -> full input sequence with special tokens and position embedding."""

        pos_embedding = self._get_pos_embed(H, W)
        if pos_embedding is not None and self.pos_embed_special_tokens is False:
            x = x + pos_embedding

        special_tokens = self._special_tokens(x.size(0))
        if len(special_tokens) > 0:
            x = torch.concat(special_tokens + [x], dim=1)  # noqa: RUF005 (TorchScript)

        if pos_embedding is not None and self.pos_embed_special_tokens is True:
            x = x + pos_embedding

        return x

    def _tokens_to_map(self, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, special + L, C) -> (B, C, H / patch, W / patch), special tokens dropped."""

        tokens = tokens[:, self.num_special_tokens :].permute(0, 2, 1)
        B, C, _ = tokens.size()
        return tokens.reshape(B, C, H // self.patch_size, W // self.patch_size)

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

        if freeze_classifier is False:
            for param in self.classifier.parameters():
                param.requires_grad_(True)

        if unfreeze_features is True:
            # "Features" here are the layers between the encoder and the classifier
            heads: list[nn.Module] = [self.norm, self.embedding_norm]
            if self.attn_pool is not None:
                heads.append(self.attn_pool)
            for module in heads:
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

        # The class token sits right after the registers
        return x[:, self.num_reg_tokens]

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))
        x = self._embed_tokens(x, H, W)

        if self.out_indices is None:
            xs = [self.encoder(x)]
        else:
            xs = self.encoder.forward_features(x, out_indices=self.out_indices)

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
        """Encode only the kept patches (MAE style): ``ids_keep`` is (B, kept) indices into the patch grid.

        The position embedding is added before dropping tokens, so kept patches keep their positions. With
        ``return_all_features`` the tokens of every block are stacked on a trailing axis (last one normed).
        """

        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))

        pos_embedding = self._get_pos_embed(H, W)
        with_special_pos = pos_embedding is not None and self.pos_embed_special_tokens is True
        if pos_embedding is not None:
            x = x + (pos_embedding[:, self.num_special_tokens :] if with_special_pos is True else pos_embedding)

        if ids_keep is not None:
            x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, x.size(2)))

        special_tokens: list[torch.Tensor] = []
        if self.reg_tokens is not None:
            reg_tokens: torch.Tensor = self.reg_tokens
            if with_special_pos is True:
                assert pos_embedding is not None
                reg_tokens = reg_tokens + pos_embedding[:, : self.num_reg_tokens]
            special_tokens.append(reg_tokens.expand(x.size(0), -1, -1))
        if self.class_token is not None:
            cls_token: torch.Tensor = self.class_token
            if with_special_pos is True:
                assert pos_embedding is not None
                cls_token = cls_token + pos_embedding[:, self.num_reg_tokens : self.num_reg_tokens + 1]
            special_tokens.append(cls_token.expand(x.size(0), -1, -1))
        if len(special_tokens) > 0:
            x = torch.concat(special_tokens + [x], dim=1)  # noqa: RUF005 (TorchScript)

        if return_all_features is True:
            xs = self.encoder.forward_features(x)
            xs[-1] = self.norm(xs[-1])
            x = torch.stack(xs, dim=-1)
        else:
            x = self.norm(self.encoder(x))

        result: TokenOmissionResultType = {}
        if return_keys in ("all", "tokens"):
            result["tokens"] = x
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.embedding_from_features(x[..., -1] if return_all_features is True else x)

        return result

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Encode every patch with the masked ones zeroed or replaced by ``mask_token`` (SimMIM style)."""

        H, W = x.shape[-2:]
        x = self.conv_proj(x)
        x = mask_tensor(x, mask, mask_token=mask_token, patch_factor=self.max_stride // self.stem_stride)
        x = self._embed_tokens(self.patch_embed(x), H, W)
        x = self.norm(self.encoder(x))

        result: TokenRetentionResultType = {}
        if return_keys in ("all", "features"):
            result["features"] = self._tokens_to_map(x, H, W)
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.embedding_from_features(x)

        return result

    def forward_features(
        self, x: torch.Tensor, return_input_embedding: bool = False, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(B, C, H, W) -> normed tokens (B, special + L, D).

        With ``return_input_embedding`` the encoder input (special + patch tokens, before the position
        embedding) is stacked with the output on a trailing axis: (B, special + L, D, 2).
        """

        H, W = x.shape[-2:]
        patch_tokens = self.patch_embed(self.conv_proj(x))
        x = self._embed_tokens(patch_tokens, H, W)
        x = self.norm(self.encoder(x, attn_mask=attn_mask))

        if return_input_embedding is True:
            input_embedding = torch.concat(self._special_tokens(x.size(0)) + [patch_tokens], dim=1)  # noqa: RUF005
            return torch.stack([input_embedding, x], dim=-1)

        return x

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        if include_special_tokens is False:
            return features[:, self.num_special_tokens :]

        return features

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedding_norm(self._pool(features))  # type: ignore[no-any-return]

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Resize the position embedding (bicubic / bilinear, prefix tokens untouched) for a new resolution."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return
        if new_size[0] % self.patch_size != 0 or new_size[1] % self.patch_size != 0:
            raise ValueError(f"ViT: new size {new_size} must be divisible by patch_size {self.patch_size}")

        old_size = self.size
        super().adjust_size(new_size)
        if self.pos_embedding is None:
            return

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
