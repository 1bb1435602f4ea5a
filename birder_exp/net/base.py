"""The contract every network keeps (Birder's): ``forward_features`` -> ``embedding_from_features`` -> ``classify``.

Networks do not register themselves: the catalogue (plain data) names them, and the registry imports a family
module only when it builds one of its names.
"""

import copy
import logging
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import NotRequired
from typing import Optional
from typing import TypedDict
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from birder_exp.model_registry import Task

logger = logging.getLogger(__name__)

DataShapeType = TypedDict("DataShapeType", {"data_shape": list[int]})
SignatureType = TypedDict("SignatureType", {"inputs": list[DataShapeType], "outputs": list[DataShapeType]})
TokenOmissionResultType = TypedDict(
    "TokenOmissionResultType",
    {
        "tokens": NotRequired[torch.Tensor],
        "embedding": NotRequired[torch.Tensor],
        "moe_training_output": NotRequired[dict[str, torch.Tensor]],
    },
)
TokenRetentionResultType = TypedDict(
    "TokenRetentionResultType",
    {
        "features": NotRequired[torch.Tensor],
        "embedding": NotRequired[torch.Tensor],
        "moe_training_output": NotRequired[dict[str, torch.Tensor]],
    },
)


def get_signature(input_shape: tuple[int, ...], num_outputs: int) -> SignatureType:
    return {
        "inputs": [{"data_shape": [0, *input_shape[1:]]}],
        "outputs": [{"data_shape": [0, num_outputs]}],
    }


def make_divisible(v: float, divisor: int, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%."""

    if min_value is None:
        min_value = divisor

    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor

    return new_v


def stochastic_depth_rates(
    drop_path_rate: float, num_blocks: int, endpoint: bool = True, constant: bool = False
) -> list[float]:
    """Linear drop-path schedule; computed on the CPU so meta-device builds get real numbers."""

    if num_blocks == 0:
        return []
    if constant is True:
        return [drop_path_rate] * num_blocks

    num_steps = num_blocks if endpoint is True else num_blocks + 1
    rates: list[float] = torch.linspace(0.0, drop_path_rate, steps=num_steps, device="cpu").tolist()
    if endpoint is False:
        rates.pop()

    return rates


def staged_stochastic_depth_rates(
    drop_path_rate: float, depths: Sequence[int], endpoint: bool = True, constant: bool = False
) -> list[list[float]]:
    rates = stochastic_depth_rates(drop_path_rate, sum(depths), endpoint=endpoint, constant=constant)
    staged = []
    offset = 0
    for depth in depths:
        staged.append(rates[offset : offset + depth])
        offset += depth

    return staged


@overload
def normalize_out_indices(out_indices: None, num_layers: int) -> None: ...


@overload
def normalize_out_indices(out_indices: list[int], num_layers: int) -> list[int]: ...


def normalize_out_indices(out_indices: Optional[list[int]], num_layers: int) -> Optional[list[int]]:
    if out_indices is None:
        return None

    normalized = []
    for idx in out_indices:
        if idx < 0:
            idx = num_layers + idx
        if idx < 0 or idx >= num_layers:
            raise ValueError(f"out_indices contains invalid index for num_layers={num_layers}")
        normalized.append(idx)

    return normalized


def recompute_non_persistent_buffers(module: nn.Module, device: Optional[torch.device] = None) -> None:
    """Call ``compute_buffers(device)`` on every submodule that owns non-persistent buffers.

    A module holding buffers that are not in the state_dict (RoPE tables, relative position indices...)
    computes them in one method, ``compute_buffers``, called from its ``__init__`` and again here after a
    meta-device build has been materialised. Children are visited before parents.
    """

    if device is None:
        tensor: Optional[torch.Tensor] = next(iter(module.parameters()), None)
        if tensor is None:
            tensor = next(iter(module.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("cpu")

    for child in reversed(list(module.modules())):
        compute = getattr(child, "compute_buffers", None)
        if callable(compute):
            compute(device)


class GradCheckpointing:
    """Gradient checkpointing settings behind Birder's ``set_grad_checkpointing`` signature, written once.

    A module (a net or one of its encoders) opts in by calling ``_init_grad_checkpointing`` in ``__init__``; a net
    whose checkpointing lives in a child hands the call on by overriding ``_grad_checkpointing_owner``. Anything
    else refuses with one clear line, as Birder's nets without checkpointing do.
    """

    if TYPE_CHECKING:  # Not class annotations at runtime: TorchScript would read them as attribute types
        grad_checkpointing: bool
        grad_checkpointing_segments: Optional[int]
        grad_checkpointing_preserve_rng_state: bool
        grad_checkpointing_use_reentrant: bool

    def _init_grad_checkpointing(self) -> None:
        self._has_grad_checkpointing = True
        self.grad_checkpointing = False
        self.grad_checkpointing_segments = None
        self.grad_checkpointing_preserve_rng_state = True
        self.grad_checkpointing_use_reentrant = False

    def _grad_checkpointing_owner(self) -> "GradCheckpointing":
        if getattr(self, "_has_grad_checkpointing", False) is False:
            raise RuntimeError(f"{self.__class__.__name__} does not support gradient checkpointing")

        return self

    def _validate_grad_checkpointing(self, enable: bool, segments: Optional[int]) -> None:
        if segments is not None and segments < 1:
            raise ValueError(f"Gradient checkpointing segments must be a positive int or None, got {segments}")

    def _grad_checkpointing_changed(self) -> None:
        """Called after the settings change (e.g. to collect the blocks to checkpoint)."""

    def set_grad_checkpointing(
        self,
        enable: bool = True,
        *,
        segments: Optional[int] = None,
        preserve_rng_state: bool = True,
        use_reentrant: bool = False,
    ) -> None:
        owner = self._grad_checkpointing_owner()
        if owner is not self:
            owner.set_grad_checkpointing(
                enable, segments=segments, preserve_rng_state=preserve_rng_state, use_reentrant=use_reentrant
            )
            return

        self._validate_grad_checkpointing(enable, segments)
        logger.debug(
            f"Gradient checkpointing {'on' if enable else 'off'}: segments={segments}, "
            f"preserve_rng_state={preserve_rng_state}, use_reentrant={use_reentrant}"
        )
        self.grad_checkpointing = enable
        self.grad_checkpointing_segments = segments
        self.grad_checkpointing_preserve_rng_state = preserve_rng_state
        self.grad_checkpointing_use_reentrant = use_reentrant
        self._grad_checkpointing_changed()

    def _checkpointing_active(self) -> bool:
        return self.grad_checkpointing is True and torch.is_grad_enabled() is True

    def _run_checkpointed(self, functions: Any, x: torch.Tensor) -> torch.Tensor:
        """``checkpoint_sequential`` over ``functions`` (modules or callables) with the stored settings."""

        segments = len(functions)
        if self.grad_checkpointing_segments is not None:
            segments = min(self.grad_checkpointing_segments, segments)

        return checkpoint_sequential(  # type: ignore[no-any-return]
            functions,
            segments,
            x,
            use_reentrant=self.grad_checkpointing_use_reentrant,
            preserve_rng_state=self.grad_checkpointing_preserve_rng_state,
        )


class BaseNet(GradCheckpointing, nn.Module):
    default_size: ClassVar[tuple[int, int]] = (224, 224)
    block_group_regex: ClassVar[Optional[str]]
    auto_register: ClassVar[bool] = False
    scriptable: ClassVar[bool] = True
    square_only: ClassVar[bool] = False
    task: ClassVar[str] = str(Task.IMAGE_CLASSIFICATION)
    config: Optional[dict[str, Any]]

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.num_classes = num_classes
        if hasattr(self, "config") is False:
            self.config = config
        elif self.config is not None:
            self.config = copy.deepcopy(self.config)  # Never mutate the registered config

        if config is not None:
            if self.config is None:
                self.config = {}
            self.config.update(config)

        self.size = tuple(size) if size is not None else self.default_size  # type: ignore[assignment]
        if (
            len(self.size) != 2
            or not isinstance(self.size[0], int)
            or not isinstance(self.size[1], int)
            or self.size[0] <= 0
            or self.size[1] <= 0
        ):
            raise ValueError(f"{type(self).__name__}: size must be two positive ints (h, w), got {size!r}")
        if self.square_only is True and self.size[0] != self.size[1]:
            raise ValueError(f"{type(self).__name__} takes square inputs only, got size {self.size}")

        self.dynamic_size = False
        self.head_bias = True
        self.mlp_head = False
        if self.config is not None:
            self.head_bias = self.config.get("head_bias", True)
            self.mlp_head = self.config.get("mlp_head", False)

        self.max_stride: int
        self.feature_dim: int
        self.embedding_size: int
        self.classifier: nn.Module

    def require_config(self, *keys: str) -> dict[str, Any]:
        """The config, after checking it names every required key (one clear line otherwise)."""

        if self.config is None or any(key not in self.config for key in keys):
            raise ValueError(
                f"{type(self).__name__} needs a config with {', '.join(keys)} "
                f"(e.g. register a name with register_model_config), got {self.config!r}"
            )

        return self.config

    def create_classifier(
        self, embed_dim: Optional[int] = None, head_bias: Optional[bool] = None, mlp_head: Optional[bool] = None
    ) -> nn.Module:
        if self.num_classes == 0:
            return nn.Identity()

        if embed_dim is None:
            embed_dim = self.embedding_size
        if head_bias is None:
            head_bias = self.head_bias
        if mlp_head is None:
            mlp_head = self.mlp_head

        if mlp_head is True:
            hidden_dim = 3 * embed_dim
            return nn.Sequential(
                nn.Linear(embed_dim, hidden_dim),
                nn.GELU(),
                nn.LayerNorm(hidden_dim, eps=1e-6),
                nn.Linear(hidden_dim, self.num_classes, bias=head_bias),
            )

        return nn.Linear(embed_dim, self.num_classes, bias=head_bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = self.create_classifier()

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        logger.debug(f"Setting dynamic size to: {dynamic_size}")
        self.dynamic_size = dynamic_size

    def recompute_buffers(self, device: Optional[torch.device] = None) -> None:
        """Recompute every non-persistent buffer, e.g. after building on the meta device and loading weights."""

        recompute_non_persistent_buffers(self, device)

    def strip_for_forward_features(self) -> None:
        """Remove parameters and buffers that forward_features does not use."""

        if hasattr(self, "features") is True:
            self.features = nn.Identity()

        self.classifier = nn.Identity()

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """One-time adjustment for a new resolution; runs after load_state_dict."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return
        if self.square_only is True and new_size[0] != new_size[1]:
            raise ValueError(f"{type(self).__name__} takes square inputs only, got size {new_size}")

        logger.info(f"Adjusting model input resolution from {self.size} to {new_size}")
        self.size = new_size

    def _get_input_conv(self) -> nn.Conv2d:
        raise RuntimeError(f"{self.__class__.__name__} does not support input channel adjustment")

    def adjust_input_channels(self, input_channels: int) -> None:
        if input_channels == self.input_channels:
            return

        conv = self._get_input_conv()
        if conv.groups != 1 or conv.in_channels != self.input_channels:
            raise RuntimeError("Input channel adjustment requires an ungrouped input convolution")

        weight = conv.weight.detach()
        if weight.dtype in (torch.float16, torch.bfloat16):
            weight = weight.float()

        if input_channels == 1:
            weight = weight.sum(dim=1, keepdim=True)
        else:
            repeats = (input_channels + self.input_channels - 1) // self.input_channels
            weight = weight.repeat(1, repeats, 1, 1)[:, :input_channels]
            weight = weight * (self.input_channels / input_channels)

        logger.info(f"Adjusting model input channels from {self.input_channels} to {input_channels}")
        conv.weight = nn.Parameter(weight.to(dtype=conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.in_channels = input_channels
        self.input_channels = input_channels

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

        if freeze_classifier is False:
            for param in self.classifier.parameters():
                param.requires_grad_(True)
        if unfreeze_features is True and hasattr(self, "features") is True:
            for param in self.features.parameters():
                param.requires_grad_(True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Full feature map, special tokens included."""

        raise NotImplementedError

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        if features.ndim == 4:
            return features.flatten(2).permute(0, 2, 1)
        if features.ndim == 3:
            return features

        raise RuntimeError(f"Unsupported feature shape: {features.size()}")

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_from_features(self.forward_features(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.embedding_from_features(x)
        return self.classify(x)


class PreTrainEncoder(BaseNet):
    """An encoder that MIM / SSL methods can pre-train."""

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        self.stem_stride: int
        self.stem_width: int
        self.decoder_block: Callable[[int], nn.Module]


class MaskedTokenOmissionMixin:
    """Masked encoding that keeps a subset of tokens (ViT-like, MAE style)."""

    num_special_tokens: int

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _omission_result(
        self, x: torch.Tensor, return_all_features: bool, return_keys: Literal["all", "tokens", "embedding"]
    ) -> TokenOmissionResultType:
        """The result dict from the encoded tokens (stacked on a last axis when ``return_all_features``)."""

        result: TokenOmissionResultType = {}
        if return_keys in ("all", "tokens"):
            result["tokens"] = x
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.embedding_from_features(x[..., -1] if return_all_features is True else x)

        return result

    def masked_encoding_omission(
        self,
        x: torch.Tensor,
        ids_keep: Optional[torch.Tensor] = None,
        return_all_features: bool = False,
        return_keys: Literal["all", "tokens", "embedding"] = "tokens",
    ) -> TokenOmissionResultType:
        raise NotImplementedError


class MaskedTokenRetentionMixin:
    """Masked encoding that replaces masked tokens in place (SimMIM / FCMAE style)."""

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        raise NotImplementedError

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _retention_result(
        self,
        x: torch.Tensor,
        return_keys: Literal["all", "features", "embedding"],
        to_feature_map: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> TokenRetentionResultType:
        """The result dict from the encoder output; ``to_feature_map`` turns it into (B, C, H, W) if it is not."""

        result: TokenRetentionResultType = {}
        if return_keys in ("all", "features"):
            result["features"] = x if to_feature_map is None else to_feature_map(x)
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.embedding_from_features(x)

        return result


class DetectorBackbone(BaseNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        self.return_stages = ["stage1", "stage2", "stage3", "stage4"]
        self.return_channels: list[int]

    def strip_for_detection_features(self) -> None:
        """Remove parameters and buffers that detection_features does not use."""

        super().strip_for_forward_features()

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def freeze_stages(self, up_to_stage: int) -> None:
        raise NotImplementedError


class BlockCheckpointing(GradCheckpointing):
    """Gradient checkpointing over every block of ``self.body`` (a Sequential of stage Sequentials)."""

    if TYPE_CHECKING:
        body: nn.Sequential

    def _init_grad_checkpointing(self) -> None:
        super()._init_grad_checkpointing()
        self._grad_checkpointing_blocks: tuple[nn.Module, ...] = ()

    def _grad_checkpointing_changed(self) -> None:
        if self.grad_checkpointing is True:
            self._grad_checkpointing_blocks = tuple(
                block for stage in self.body.children() for block in stage.children()
            )
        else:
            self._grad_checkpointing_blocks = ()

    def _forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """All stages, checkpointed block by block (or in ``segments`` groups) when enabled and training."""

        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            return self._run_checkpointed(self._grad_checkpointing_blocks, x)

        return self.body(x)  # type: ignore[no-any-return]


class StagedBackbone:
    """``detection_features`` and ``freeze_stages`` for nets laid out as ``stem`` -> ``body`` (stages ``stageN``).

    Hooks: ``_detection_stem`` (input -> first stage input, default the stem), ``_detection_output`` (a stage
    output -> its returned map, default unchanged) and ``_stem_parameters`` (what ``freeze_stages`` always
    freezes, default the stem's parameters).
    """

    if TYPE_CHECKING:
        stem: Any  # Each family's own stem type
        body: nn.Sequential
        return_stages: list[str]

    def _detection_stem(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.stem(x)
        return out

    def _detection_output(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _stem_parameters(self) -> Iterator[nn.Parameter]:
        params: Iterator[nn.Parameter] = self.stem.parameters()
        return params

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._detection_stem(x)
        out = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.return_stages:
                out[name] = self._detection_output(x)

        return out

    def freeze_stages(self, up_to_stage: int) -> None:
        """Freeze the stem and the first ``up_to_stage`` stages."""

        for param in self._stem_parameters():
            param.requires_grad_(False)

        for idx, module in enumerate(self.body.children()):
            if idx >= up_to_stage:
                break
            for param in module.parameters():
                param.requires_grad_(False)


def pos_embedding_sin_cos_2d(
    h: int,
    w: int,
    dim: int,
    num_special_tokens: int,
    temperature: int = 10000,
    include_frequency_endpoint: bool = True,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos_dim = dim // 4
    denominator = pos_dim - 1 if include_frequency_endpoint is True else pos_dim
    omega = torch.arange(pos_dim, device=device) / denominator
    omega = 1.0 / (temperature**omega)

    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    pe = torch.concat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)
    if num_special_tokens > 0:
        pe = torch.concat([torch.zeros([num_special_tokens, dim], device=device), pe], dim=0)

    return pe


def interpolate_attention_bias(
    attention_bias: torch.Tensor,
    old_resolution: tuple[int, int],
    new_resolution: tuple[int, int],
    mode: Literal["bilinear", "bicubic"] = "bicubic",
) -> torch.Tensor:
    H, _ = attention_bias.size()
    orig_dtype = attention_bias.dtype
    attention_bias = attention_bias.float()  # Interpolate needs float32
    attention_bias = attention_bias.reshape(1, H, old_resolution[0], old_resolution[1])
    attention_bias = F.interpolate(attention_bias, size=new_resolution, mode=mode, antialias=True)
    attention_bias = attention_bias.reshape(H, new_resolution[0] * new_resolution[1])

    return attention_bias.to(orig_dtype)


def reparameterize_available(net: nn.Module) -> bool:
    return hasattr(net, "reparameterize_model")


def trunc_normal_init_(
    root: nn.Module,
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear,),
    reset_layer_norm: bool = False,
    std: float = 0.02,
) -> None:
    """The usual transformer init in one module walk: truncated normal weights and zero biases for
    ``layer_types``, and (with ``reset_layer_norm``) unit-weight zero-bias LayerNorms; the random draws happen
    in module order, as the families' own loops did."""

    for m in root.modules():
        if isinstance(m, layer_types):
            weight: torch.Tensor = m.weight  # type: ignore[assignment]
            bias: Optional[torch.Tensor] = m.bias  # type: ignore[assignment]
            nn.init.trunc_normal_(weight, std=std)
            if bias is not None:
                nn.init.zeros_(bias)
        elif reset_layer_norm is True and isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
