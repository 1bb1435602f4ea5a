"""What the ViT-like families (ViT, RoPE ViT) share: config choices, the patch stem, the encoder scaffolding, and
the net-level token plumbing (special tokens, position embedding, pooling, masked encoding, detection features,
resizing).

A family subclasses ``ViTLikeNet`` and says how its encoder is called: ``_encode`` / ``_encode_layers`` take the
tokens and what ``_positions`` returns for the input (None for ViT, the RoPE table for RoPE ViT), so the token
layout ``[REG..., CLS, PATCH...]`` and everything built on it is written once.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import NamedTuple
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.activations import get_activation_module
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.ffn import FFN
from birder_exp.layers.ffn import SwiGLU_FFN
from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.layers.layer_scale import layer_scale_or_identity
from birder_exp.layers.masking import mask_tensor
from birder_exp.layers.moe import SoftMoE_FFN
from birder_exp.layers.patch_embed import PatchEmbed
from birder_exp.layers.patch_embed import adjust_position_embedding
from birder_exp.layers.patch_embed import hMLPStem
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import GradCheckpointing
from birder_exp.net.base import MaskedTokenOmissionMixin
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import TokenOmissionResultType
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import normalize_out_indices
from birder_exp.net.base import stochastic_depth_rates

NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"LayerNorm": nn.LayerNorm, "RMSNorm": nn.RMSNorm}
STEM_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"BatchNorm2d": nn.BatchNorm2d, "LayerNorm2d": LayerNorm2d}
ATTN_POOLS: dict[str, tuple[type[nn.Module], Optional[int]]] = {
    # type -> (class, default number of heads; None means the encoder's)
    "MultiHeadAttentionPool": (MultiHeadAttentionPool, None),
    "EfficientProbing": (EfficientProbing, 1),
}
REQUIRED_KEYS = ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "drop_path_rate")


def choice(owner: str, what: str, value: Any, table: dict[str, Any]) -> Any:
    if value not in table:
        raise ValueError(f"{owner}: unknown {what} '{value}' (valid: {', '.join(table)})")

    return table[value]


def require_config(owner: str, config: Optional[dict[str, Any]], example: str) -> dict[str, Any]:
    """The config, after checking it has every key a ViT-like net needs (one clear line otherwise)."""

    if config is None:
        raise ValueError(
            f"{owner} needs a config ({', '.join(REQUIRED_KEYS)}); build a registered name such as "
            f"'{example}' or pass config=..."
        )

    missing = [key for key in REQUIRED_KEYS if key not in config]
    if len(missing) > 0:
        raise ValueError(f"{owner} config is missing required keys: {', '.join(missing)}")

    return config


def check_geometry(
    owner: str, size: tuple[int, ...], patch_size: int, hidden_dim: int, num_heads: int, interpolation_mode: str
) -> None:
    if interpolation_mode not in ("bilinear", "bicubic"):
        raise ValueError(
            f"{owner}: unknown pos_embed_interpolation_mode '{interpolation_mode}' (valid: bilinear, bicubic)"
        )
    if size[0] % patch_size != 0 or size[1] % patch_size != 0:
        raise ValueError(f"{owner}: input size {size} is not divisible by patch_size {patch_size}")
    if hidden_dim % num_heads != 0:
        raise ValueError(f"{owner}: hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")


def mlp_layer_for(
    owner: str,
    mlp_layer_type: str,
    norm_layer: Callable[..., nn.Module],
    norm_layer_eps: float,
    soft_moe_num_experts: Optional[int],
) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    """The block FFN and its default activation."""

    if mlp_layer_type == "FFN":
        return (FFN, nn.GELU)
    if mlp_layer_type == "SwiGLU_FFN":
        return (SwiGLU_FFN, nn.SiLU)
    if mlp_layer_type == "Norm_SwiGLU_FFN":
        return (partial(SwiGLU_FFN, norm_layer=norm_layer, norm_eps=norm_layer_eps), nn.SiLU)
    if mlp_layer_type == "SoftMoE_FFN":
        if soft_moe_num_experts is None:
            raise ValueError(f"{owner}: soft_moe_num_experts must be set when mlp_layer_type is 'SoftMoE_FFN'")
        return (SoftMoE_FFN, nn.GELU)

    raise ValueError(
        f"{owner}: unknown mlp_layer_type '{mlp_layer_type}' (valid: FFN, SwiGLU_FFN, Norm_SwiGLU_FFN, SoftMoE_FFN)"
    )


def block_mlp_layers(
    num_layers: int,
    mlp_layer: Callable[..., nn.Module],
    soft_moe_num_experts: Optional[int],
    soft_moe_num_slots: int,
    norm_layer_eps: float,
) -> list[Callable[..., nn.Module]]:
    """The FFN of each block: with Soft MoE, dense FFN in the first half and Soft MoE in the second."""

    if soft_moe_num_experts is None:
        return [mlp_layer] * num_layers

    moe = partial(mlp_layer, num_experts=soft_moe_num_experts, num_slots=soft_moe_num_slots, norm_eps=norm_layer_eps)
    return [FFN if idx < num_layers // 2 else moe for idx in range(num_layers)]


def build_patch_stem(
    owner: str,
    input_channels: int,
    stem_type: str,
    stem_norm_layer_type: Optional[str],
    patch_size: int,
    hidden_dim: int,
    pre_norm: bool,
) -> nn.Module:
    """Patchify convolution (no bias under pre-norm, as in CLIP) or hierarchical MLP stem."""

    if stem_type == "patchify":
        if stem_norm_layer_type is not None:
            raise ValueError(
                f"{owner}: stem_norm_layer_type is only supported with stem_type='hmlp' (got '{stem_norm_layer_type}')"
            )

        return nn.Conv2d(
            input_channels,
            hidden_dim,
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            padding=(0, 0),
            bias=not pre_norm,
        )

    if stem_type == "hmlp":
        if patch_size != 16:
            raise ValueError(f"{owner}: the hMLP stem requires patch_size=16, got {patch_size}")
        if stem_norm_layer_type is None:
            return hMLPStem(input_channels, hidden_dim)

        stem_norm_layer = choice(owner, "stem_norm_layer_type", stem_norm_layer_type, STEM_NORM_LAYERS)
        return hMLPStem(input_channels, hidden_dim, norm_layer=stem_norm_layer)

    raise ValueError(f"{owner}: unknown stem_type '{stem_type}' (valid: patchify, hmlp)")


def build_pre_block(
    dropout: float, pre_norm: bool, hidden_dim: int, norm_layer: Callable[..., nn.Module], norm_layer_eps: float
) -> nn.Sequential:
    """The encoder's ``pre_block``: optional input dropout, then optional pre-norm."""

    pre_layers: list[nn.Module] = []
    if dropout > 0.0:
        pre_layers.append(nn.Dropout(dropout))
    if pre_norm is True:
        pre_layers.append(norm_layer(hidden_dim, eps=norm_layer_eps))

    return nn.Sequential(*pre_layers)


class EncoderSettings(GradCheckpointing):
    """Causal attention and gradient checkpointing switches of a ViT-like encoder."""

    if TYPE_CHECKING:
        has_soft_moe: bool
        is_causal: bool

    def _init_encoder_settings(self, has_soft_moe: bool) -> None:
        self.is_causal = False
        self.has_soft_moe = has_soft_moe
        self._init_grad_checkpointing()

    def set_causal_attention(self, is_causal: bool = True) -> None:
        if is_causal is True and self.has_soft_moe is True:
            raise ValueError("SoftMoE_FFN does not support causal attention (it mixes all tokens into every slot)")

        self.is_causal = is_causal


class SelfAttentionBase(nn.Module):
    """The parameters of multi-head self-attention (qkv, optional q / k norms, output norm and projection).

    Subclasses write ``forward``; initialisation (truncated-normal weights, zero biases) is shared.
    """

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
            raise ValueError(f"{type(self).__name__}: dim ({dim}) must be divisible by num_heads ({num_heads})")

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


class PreNormBlockBase(nn.Module):
    """Pre-norm transformer block layout: ``norm1``, ``attn``, ``drop_path``, ``layer_scale_1``, ``norm2``,
    ``mlp``, ``layer_scale_2``.

    The subclass names its attention (``attention_type``, which also gets ``attention_options``) and writes
    ``forward``. ``drop_path`` None builds no ``drop_path`` module (decoder blocks).
    """

    if TYPE_CHECKING:
        attention_type: Callable[..., nn.Module]

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: Optional[int],
        dropout: float,
        attention_dropout: float,
        projection_dropout: float,
        drop_path: Optional[float],
        activation_layer: Callable[..., nn.Module],
        layer_scale_init_value: Optional[float] = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        mlp_layer: Callable[..., nn.Module] = FFN,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_norm: bool = False,
        **attention_options: Any,
    ) -> None:
        super().__init__()
        self.need_attn = False
        if mlp_dim is None:
            mlp_dim = 4 * hidden_dim

        self.norm1 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.attn = self.attention_type(
            hidden_dim,
            num_heads=num_heads,
            attn_drop=attention_dropout,
            proj_drop=projection_dropout,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            attn_norm=attn_norm,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            **attention_options,
        )
        if drop_path is not None:
            self.drop_path = StochasticDepth(drop_path, mode="row")
        self.layer_scale_1 = layer_scale_or_identity(hidden_dim, layer_scale_init_value)
        self.norm2 = norm_layer(hidden_dim, eps=norm_layer_eps)
        self.mlp = mlp_layer(hidden_dim, mlp_dim, act_layer=activation_layer, dropout=dropout)
        self.layer_scale_2 = layer_scale_or_identity(hidden_dim, layer_scale_init_value)


class EncoderBase(EncoderSettings, nn.Module):
    """Optional input dropout / pre-norm (``pre_block``) followed by the stack of blocks (``block``).

    The family's encoder names its block class (``block_type``) and container (``sequential_type``) and writes
    ``forward``; ``block_options`` are extra keyword arguments of every block. With Soft MoE, the second half of
    the blocks swap their FFN for a ``SoftMoE_FFN``.
    """

    if TYPE_CHECKING:
        block_type: type[nn.Module]
        sequential_type: type[nn.Sequential]

    sequential_type = nn.Sequential

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
        block_options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if len(dpr) != num_layers:
            raise ValueError(
                f"{type(self).__name__}: dpr needs one drop-path rate per layer ({num_layers}), got {len(dpr)}"
            )

        self.need_attn = False
        self._init_encoder_settings(has_soft_moe=soft_moe_num_experts is not None)
        self.pre_block = build_pre_block(dropout, pre_norm, hidden_dim, norm_layer, norm_layer_eps)
        mlp_layers = block_mlp_layers(num_layers, mlp_layer, soft_moe_num_experts, soft_moe_num_slots, norm_layer_eps)
        extra = block_options if block_options is not None else {}
        self.block = self.sequential_type(
            *[
                self.block_type(
                    num_heads=num_heads,
                    hidden_dim=hidden_dim,
                    mlp_dim=mlp_dim,
                    dropout=dropout,
                    attention_dropout=attention_dropout,
                    projection_dropout=projection_dropout,
                    drop_path=dpr[idx],
                    activation_layer=activation_layer,
                    layer_scale_init_value=layer_scale_init_value,
                    norm_layer=norm_layer,
                    norm_layer_eps=norm_layer_eps,
                    mlp_layer=mlp_layers[idx],
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    attn_norm=attn_norm,
                    **extra,
                )
                for idx in range(num_layers)
            ]
        )

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


class ViTParts(NamedTuple):
    """What ``ViTLikeNet._init_common`` resolved from the config, for the family to build its encoder with."""

    cfg: dict[str, Any]
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    pre_norm: bool
    norm_layer: Callable[..., nn.Module]
    norm_layer_eps: float
    mlp_layer_type: str
    mlp_layer: Callable[..., nn.Module]
    act_layer: Callable[..., nn.Module]
    soft_moe_num_experts: Optional[int]


class ViTLikeNet(DetectorBackbone, PreTrainEncoder, MaskedTokenOmissionMixin, MaskedTokenRetentionMixin):
    """Token plumbing of a plain ViT-like encoder, around an ``encoder`` with ``pre_block`` and ``block``."""

    block_group_regex = r"encoder\.block\.(\d+)"

    if TYPE_CHECKING:  # Not class annotations at runtime: TorchScript would read them as attribute types
        conv_proj: nn.Module
        patch_embed: PatchEmbed
        encoder: Any  # The family's Encoder
        norm: nn.Module
        embedding_norm: nn.Module
        attn_pool: Optional[nn.Module]
        class_token: Optional[nn.Parameter]
        reg_tokens: Optional[nn.Parameter]
        pos_embedding: Optional[nn.Parameter]
        num_special_tokens: int
        num_reg_tokens: int
        num_layers: int
        patch_size: int
        pos_embed_special_tokens: bool
        pos_embed_interpolation_mode: Literal["bilinear", "bicubic"]
        pos_embed_antialias: bool
        attn_pool_special_tokens: bool
        out_indices: Optional[list[int]]

    # Construction

    soft_moe_experts_need_moe_ffn: ClassVar[bool] = False  # Refuse soft_moe_num_experts without SoftMoE_FFN

    def _init_common(self, owner: str, example: str) -> ViTParts:
        """Read the config keys every ViT-like net shares, validate them, and build the stem and the tokens."""

        cfg = require_config(owner, self.config, example)
        num_heads: int = cfg["num_heads"]
        hidden_dim: int = cfg["hidden_dim"]
        pre_norm: bool = cfg.get("pre_norm", False)
        norm_layer_eps: float = cfg.get("norm_layer_eps", 1e-6)
        mlp_layer_type: str = cfg.get("mlp_layer_type", "FFN")
        soft_moe_num_experts: Optional[int] = cfg.get("soft_moe_num_experts")
        act_layer_type: Optional[str] = cfg.get("act_layer_type")  # None: the MLP type's own activation

        self.pos_embed_special_tokens = cfg.get("pos_embed_special_tokens", True)
        self.pos_embed_interpolation_mode = cfg.get("pos_embed_interpolation_mode", "bicubic")
        self.pos_embed_antialias = cfg.get("pos_embed_antialias", False)  # Dynamic-size forward only
        self.patch_size = cfg["patch_size"]
        self.num_layers = cfg["num_layers"]
        self.hidden_dim = hidden_dim
        self.num_reg_tokens = cfg.get("num_reg_tokens", 0)
        self.attn_pool_special_tokens = cfg.get("attn_pool_special_tokens", False)
        self.out_indices = normalize_out_indices(cfg.get("out_indices"), self.num_layers)

        check_geometry(owner, self.size, self.patch_size, hidden_dim, num_heads, self.pos_embed_interpolation_mode)
        if self.soft_moe_experts_need_moe_ffn is True and (
            soft_moe_num_experts is not None and mlp_layer_type != "SoftMoE_FFN"
        ):
            raise ValueError(f"{owner}: soft_moe_num_experts must be set exactly when mlp_layer_type is 'SoftMoE_FFN'")

        self.conv_proj = build_patch_stem(
            owner,
            self.input_channels,
            cfg.get("stem_type", "patchify"),
            cfg.get("stem_norm_layer_type"),
            self.patch_size,
            hidden_dim,
            pre_norm,
        )
        norm_layer = choice(owner, "norm_layer_type", cfg.get("norm_layer_type", "LayerNorm"), NORM_LAYERS)
        mlp_layer, act_layer = mlp_layer_for(owner, mlp_layer_type, norm_layer, norm_layer_eps, soft_moe_num_experts)
        if act_layer_type is not None:
            act_layer = get_activation_module(act_layer_type)

        self.patch_embed = PatchEmbed()
        self._init_tokens(hidden_dim, cfg.get("class_token", True), cfg.get("abs_pos_embed", True))
        return ViTParts(
            cfg,
            num_heads,
            hidden_dim,
            cfg["mlp_dim"],
            pre_norm,
            norm_layer,
            norm_layer_eps,
            mlp_layer_type,
            mlp_layer,
            act_layer,
            soft_moe_num_experts,
        )

    def _init_encoder(self, encoder_type: Callable[..., nn.Module], parts: ViTParts, **block_options: Any) -> None:
        cfg = parts.cfg
        dpr = stochastic_depth_rates(
            cfg["drop_path_rate"], self.num_layers, constant=cfg.get("drop_path_uniform", False)
        )
        self.encoder = encoder_type(
            self.num_layers,
            parts.num_heads,
            parts.hidden_dim,
            parts.mlp_dim,
            cfg.get("dropout", 0.0),
            cfg.get("attention_dropout", 0.0),
            cfg.get("projection_dropout", 0.0),
            dpr,
            pre_norm=parts.pre_norm,
            qkv_bias=cfg.get("qkv_bias", True),
            qk_norm=cfg.get("qk_norm", False),
            attn_norm=cfg.get("attn_norm", False),
            activation_layer=parts.act_layer,
            layer_scale_init_value=cfg.get("layer_scale_init_value"),
            norm_layer=parts.norm_layer,
            norm_layer_eps=parts.norm_layer_eps,
            mlp_layer=parts.mlp_layer,
            soft_moe_num_experts=parts.soft_moe_num_experts,
            soft_moe_num_slots=cfg.get("soft_moe_num_slots", 1),
            block_options=block_options,
        )

    def _init_tokens(self, hidden_dim: int, class_token: bool, abs_pos_embed: bool) -> None:
        """Class token, registers and absolute position embedding (patch grid, plus special tokens if embedded)."""

        seq_length = (self.size[0] // self.patch_size) * (self.size[1] // self.patch_size)
        self.num_special_tokens = 0
        self.class_token = None
        self.reg_tokens = None
        if class_token is True:
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            self.num_special_tokens += 1
        if self.num_reg_tokens > 0:
            self.reg_tokens = nn.Parameter(torch.zeros(1, self.num_reg_tokens, hidden_dim))
            self.num_special_tokens += self.num_reg_tokens
        if self.pos_embed_special_tokens is True:
            seq_length += self.num_special_tokens

        self.abs_pos_embed = abs_pos_embed
        self.pos_embedding = None
        if abs_pos_embed is True:
            self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))

    def _init_head(self, owner: str, parts: ViTParts) -> None:
        """Post-norm, attention-pool head, classifier and the detector / pre-train encoder attributes."""

        cfg, num_heads, hidden_dim, mlp_dim = parts.cfg, parts.num_heads, parts.hidden_dim, parts.mlp_dim
        norm_layer, norm_layer_eps = parts.norm_layer, parts.norm_layer_eps

        # Final norm: on the token sequence (default), or on the pooled embedding ("norm after pool")
        post_norm: bool = cfg.get("post_norm", True)
        norm_after_pool: bool = cfg.get("norm_after_pool", False)
        self.norm = nn.Identity()
        self.embedding_norm = nn.Identity()
        if post_norm is True and norm_after_pool is False:
            self.norm = norm_layer(hidden_dim, eps=norm_layer_eps)
        if post_norm is True and norm_after_pool is True:
            self.embedding_norm = norm_layer(hidden_dim, eps=norm_layer_eps)

        self.attn_pool = None
        if cfg.get("attn_pool_head", False) is True:
            pool_cls, default_heads = choice(
                owner, "attn_pool_type", cfg.get("attn_pool_type", "MultiHeadAttentionPool"), ATTN_POOLS
            )
            pool_heads: Optional[int] = cfg.get("attn_pool_num_heads")
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

        self.max_stride = self.patch_size
        self.stem_stride = self.patch_size
        self.stem_width = hidden_dim
        self.feature_dim = hidden_dim

    def _init_weights(self) -> None:
        """LeCun-normal patchify convolution, zero classifier."""

        if isinstance(self.conv_proj, nn.Conv2d):
            fan_in = self.conv_proj.in_channels * self.conv_proj.kernel_size[0] * self.conv_proj.kernel_size[1]
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
            if self.conv_proj.bias is not None:
                nn.init.zeros_(self.conv_proj.bias)

        if isinstance(self.classifier, nn.Linear):
            nn.init.zeros_(self.classifier.weight)
            if self.classifier.bias is not None:
                nn.init.zeros_(self.classifier.bias)

    # What each family says about its encoder

    def _positions(self, H: int, W: int, ids_keep: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Per-input positional state the encoder takes besides the tokens (None: nothing)."""

        return None

    def _encode(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def _encode_layers(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], out_indices: Optional[list[int]] = None
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    # Token plumbing

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

    def _kept_tokens(self, x: torch.Tensor, ids_keep: Optional[torch.Tensor]) -> torch.Tensor:
        """Image -> special tokens + the kept patch tokens, each with its own position embedding."""

        H, W = x.shape[-2:]
        x = self.patch_embed(self.conv_proj(x))

        # The patch part of the position embedding goes on before dropping tokens, so kept patches keep it
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

        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            if self.attn_pool_special_tokens is False:
                x = x[:, self.num_special_tokens :]

            return self.attn_pool(x)[:, 0]  # type: ignore[no-any-return]

        if self.class_token is None:
            return x[:, self.num_special_tokens :].mean(dim=1)

        # The class token sits right after the registers
        return x[:, self.num_reg_tokens]

    # Training switches

    def _grad_checkpointing_owner(self) -> GradCheckpointing:
        assert isinstance(self.encoder, GradCheckpointing)
        return self.encoder

    def set_causal_attention(self, is_causal: bool = True) -> None:
        self.encoder.set_causal_attention(is_causal)

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

        if freeze_classifier is False:
            for param in self.classifier.parameters():
                param.requires_grad_(True)

        if unfreeze_features is True:
            # "Features" here are the layers between the encoder and the classifier
            for module in (self.norm, self.embedding_norm, self.attn_pool):
                if module is not None:
                    for param in module.parameters():
                        param.requires_grad_(True)

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

    def strip_for_forward_features(self) -> None:
        super().strip_for_forward_features()
        self.embedding_norm = nn.Identity()
        self.attn_pool = None

    def strip_for_detection_features(self) -> None:
        super().strip_for_detection_features()
        self.norm = nn.Identity()
        self.embedding_norm = nn.Identity()
        self.attn_pool = None

    # Encoder passes

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        x = self._embed_tokens(self.patch_embed(self.conv_proj(x)), H, W)
        positions = self._positions(H, W)
        if self.out_indices is None:
            xs = [self._encode(x, positions)]
        else:
            xs = self._encode_layers(x, positions, out_indices=self.out_indices)

        return {
            stage_name: self._tokens_to_map(stage_x, H, W)
            for stage_name, stage_x in zip(self.return_stages, xs, strict=True)
        }

    def masked_encoding_omission(
        self,
        x: torch.Tensor,
        ids_keep: Optional[torch.Tensor] = None,
        return_all_features: bool = False,
        return_keys: Literal["all", "tokens", "embedding"] = "tokens",
    ) -> TokenOmissionResultType:
        """Encode only the kept patches (MAE style): ``ids_keep`` is (B, kept) indices into the patch grid.

        ``tokens`` is (B, special + kept, D); with ``return_all_features`` the tokens of every block are stacked
        on a trailing axis (the last one normed).
        """

        H, W = x.shape[-2:]
        positions = self._positions(H, W, ids_keep)
        x = self._kept_tokens(x, ids_keep)
        if return_all_features is True:
            xs = self._encode_layers(x, positions)
            xs[-1] = self.norm(xs[-1])
            x = torch.stack(xs, dim=-1)
        else:
            x = self.norm(self._encode(x, positions))

        return self._omission_result(x, return_all_features, return_keys)

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Encode every patch with the masked ones zeroed or replaced by ``mask_token`` (SimMIM style).

        ``mask`` is (B, H*W / p^2); ``features`` is the (B, D, H/p, W/p) patch map.
        """

        H, W = x.shape[-2:]
        x = self.conv_proj(x)
        x = mask_tensor(x, mask, mask_token=mask_token, patch_factor=self.max_stride // self.stem_stride)
        x = self._embed_tokens(self.patch_embed(x), H, W)
        x = self.norm(self._encode(x, self._positions(H, W)))
        return self._retention_result(x, return_keys, to_feature_map=lambda t: self._tokens_to_map(t, H, W))

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
        x = self.norm(self._encode(x, self._positions(H, W), attn_mask=attn_mask))

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
        """Resize the position embedding (prefix tokens untouched) for a new resolution."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return
        if new_size[0] % self.patch_size != 0 or new_size[1] % self.patch_size != 0:
            raise ValueError(
                f"{type(self).__name__}: new size {new_size} is not divisible by patch_size {self.patch_size}"
            )

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
