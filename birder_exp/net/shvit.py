"""SHViT ("Single-Head Vision Transformer with Memory Efficient Macro Design", https://arxiv.org/abs/2401.16456),
laid out as Birder lays it out.

A 16x patchify stem, three stages; blocks are a residual depthwise 3x3, a single-head attention over only the
first ``partial_dim`` channels (stages 2 and 3), and a residual 1x1 FFN, all conv + BN. The head is BN + linear.
``reparameterize_model`` folds every BN into its conv or linear and every conv residual into its kernel, as
Birder does. Birder does not let the config change the head (``head_bias`` / ``mlp_head``); neither does this.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import SqueezeExcitation

from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("embed_dims", "depths", "partial_dims")
_QK_DIMS = (16, 16, 16)
_USE_SHSA = (False, True, True)


class Conv2dBN(nn.Sequential):
    """Conv (no bias) + BN, as children ``c`` and ``bn``; after ``reparameterize`` one biased conv ``c``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int = 1,
        bn_weight_init: float = 1.0,
        reparameterized: bool = False,
    ) -> None:
        super().__init__()
        self.reparameterized = reparameterized
        self.c = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=reparameterized,
        )
        if reparameterized is False:
            self.bn = nn.BatchNorm2d(out_channels)
            nn.init.constant_(self.bn.weight, bn_weight_init)
            nn.init.zeros_(self.bn.bias)

    def reparameterize(self) -> None:
        if self.reparameterized is True:
            return

        assert self.bn.running_mean is not None and self.bn.running_var is not None
        kernel, bias = fuse_conv_bn_weights(
            self.c.weight,
            self.c.bias,
            self.bn.running_mean,
            self.bn.running_var,
            self.bn.eps,
            self.bn.weight,
            self.bn.bias,
        )
        # The same conv, now with the folded kernel and a bias
        self.c.weight = nn.Parameter(kernel.detach().clone())
        self.c.bias = nn.Parameter(bias.detach().clone())
        for param in self.parameters():
            param.detach_()

        del self.bn
        self.reparameterized = True


class NormLinear(nn.Sequential):
    """BatchNorm1d + linear classifier (``bn``, ``li``); the norm folds into the linear."""

    def __init__(self, in_dim: int, out_dim: int, reparameterized: bool) -> None:
        super().__init__()
        self.reparameterized = reparameterized
        if reparameterized is False:
            self.bn = nn.BatchNorm1d(in_dim)

        self.li = nn.Linear(in_dim, out_dim)
        nn.init.trunc_normal_(self.li.weight, std=0.02)
        nn.init.zeros_(self.li.bias)

    def reparameterize(self) -> None:
        if self.reparameterized is True:
            return

        # The norm comes before the linear: y = W (x * s + t) + b with s = gamma / std, t = beta - mean * s
        bn, li = self.bn, self.li
        std = (bn.running_var + bn.eps) ** 0.5  # type: ignore[operator]
        s = bn.weight / std
        t = bn.bias - bn.running_mean * bn.weight / std  # type: ignore[operator]
        w = li.weight * s[None, :]
        b = (li.weight @ t[:, None]).view(-1) + li.bias

        self.li = nn.Linear(w.size(1), w.size(0), device=li.weight.device, dtype=li.weight.dtype)
        self.li.weight.data.copy_(w)
        self.li.bias.data.copy_(b)
        for param in self.parameters():
            param.detach_()

        del self.bn
        self.reparameterized = True


class Residual(nn.Module):
    """x + m(x); a conv + BN residual reparameterizes into one conv whose kernel holds the identity."""

    def __init__(self, module: nn.Module, reparameterized: bool) -> None:
        super().__init__()
        self.reparameterized = reparameterized and isinstance(module, Conv2dBN)
        self.m: nn.Module = module.c if self.reparameterized is True else module  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparameterized is True:
            return self.m(x)  # type: ignore[no-any-return]

        return x + self.m(x)  # type: ignore[no-any-return]

    def reparameterize(self) -> None:
        if self.reparameterized is True:
            return

        if hasattr(self.m, "reparameterize") is True:
            self.m.reparameterize()  # type: ignore[operator]

        if isinstance(self.m, Conv2dBN):
            conv = self.m.c
            conv.weight.data.add_(self._identity_kernel(conv))
            for param in self.parameters():
                param.detach_()

            self.m = conv
            self.reparameterized = True

    @staticmethod
    def _identity_kernel(conv: nn.Conv2d) -> torch.Tensor:
        """A kernel that passes each channel through unchanged (centre tap 1 on its own input channel)."""

        if conv.in_channels != conv.out_channels or conv.stride != (1, 1):
            raise ValueError(f"Residual: an identity kernel needs a same-width stride-1 conv, got {conv}")

        input_dim = conv.in_channels // conv.groups
        kernel = torch.zeros_like(conv.weight)
        for channel in range(conv.in_channels):
            kernel[channel, channel % input_dim, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1

        return kernel


def _pointwise(in_dim: int, out_dim: int, reparameterized: bool, bn_weight_init: float = 1.0) -> Conv2dBN:
    return Conv2dBN(
        in_dim,
        out_dim,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        bn_weight_init=bn_weight_init,
        reparameterized=reparameterized,
    )


def _depthwise(dim: int, reparameterized: bool, stride: int = 1, bn_weight_init: float = 1.0) -> Conv2dBN:
    return Conv2dBN(
        dim,
        dim,
        kernel_size=(3, 3),
        stride=(stride, stride),
        padding=(1, 1),
        groups=dim,
        bn_weight_init=bn_weight_init,
        reparameterized=reparameterized,
    )


class PatchMerging(nn.Module):
    """1x1 expand x4 -> ReLU -> depthwise 3x3 stride 2 -> ReLU -> SE -> 1x1 project."""

    def __init__(self, in_dim: int, out_dim: int, reparameterized: bool) -> None:
        super().__init__()
        hidden_dim = int(in_dim * 4)
        self.conv1 = _pointwise(in_dim, hidden_dim, reparameterized)
        self.act1 = nn.ReLU()
        self.conv2 = _depthwise(hidden_dim, reparameterized, stride=2)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcitation(hidden_dim, make_divisible(hidden_dim // 4, 8))
        self.conv3 = _pointwise(hidden_dim, out_dim, reparameterized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.conv3(self.se(x))  # type: ignore[no-any-return]


class FFN(nn.Module):
    """1x1 -> ReLU -> 1x1 (its BN starts at zero, so the residual block starts as the identity)."""

    def __init__(self, dim: int, hidden_dim: int, reparameterized: bool) -> None:
        super().__init__()
        self.pw1 = _pointwise(dim, hidden_dim, reparameterized)
        self.act = nn.ReLU()
        self.pw2 = _pointwise(hidden_dim, dim, reparameterized, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))  # type: ignore[no-any-return]


class SHSA(nn.Module):
    """Single-head self-attention on the first ``partial_dim`` channels; ReLU + 1x1 over all channels after."""

    def __init__(self, dim: int, qk_dim: int, partial_dim: int, reparameterized: bool) -> None:
        super().__init__()
        self.scale = qk_dim**-0.5
        self.qk_dim = qk_dim
        self.dim = dim
        self.partial_dim = partial_dim
        self.pre_norm = nn.GroupNorm(1, partial_dim)
        self.qkv = _pointwise(partial_dim, qk_dim * 2 + partial_dim, reparameterized)
        self.proj = nn.Sequential(nn.ReLU(), _pointwise(dim, dim, reparameterized, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x1, x2 = torch.split(x, [self.partial_dim, self.dim - self.partial_dim], dim=1)
        qkv = self.qkv(self.pre_norm(x1))
        q, k, v = torch.split(qkv, [self.qk_dim, self.qk_dim, self.partial_dim], dim=1)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)

        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x1 = (v @ attn.transpose(-2, -1)).reshape(b, self.partial_dim, h, w)
        return self.proj(torch.concat([x1, x2], dim=1))  # type: ignore[no-any-return]


class BasicBlock(nn.Module):
    def __init__(self, dim: int, qk_dim: int, partial_dim: int, use_shsa: bool, reparameterized: bool) -> None:
        super().__init__()
        self.conv = Residual(_depthwise(dim, reparameterized, bn_weight_init=0.0), reparameterized)
        self.mixer: nn.Module = (
            Residual(SHSA(dim, qk_dim, partial_dim, reparameterized), reparameterized)
            if use_shsa is True
            else nn.Identity()
        )
        self.ffn = Residual(FFN(dim, int(dim * 2), reparameterized), reparameterized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))  # type: ignore[no-any-return]


class StageBlock(nn.Module):
    """A width change opens with conv/FFN residuals around a patch merging; then the blocks."""

    def __init__(
        self, prev_dim: int, dim: int, qk_dim: int, partial_dim: int, use_shsa: bool, depth: int, reparameterized: bool
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if prev_dim != dim:
            self.downsample = nn.Sequential(
                Residual(_depthwise(prev_dim, reparameterized), reparameterized),
                Residual(FFN(prev_dim, int(prev_dim * 2), reparameterized), reparameterized),
                PatchMerging(prev_dim, dim, reparameterized),
                Residual(_depthwise(dim, reparameterized), reparameterized),
                Residual(FFN(dim, int(dim * 2), reparameterized), reparameterized),
            )
        else:
            self.downsample = nn.Identity()

        self.blocks = nn.Sequential(
            *[BasicBlock(dim, qk_dim, partial_dim, use_shsa, reparameterized) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class SHViT(StagedConvNet):
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
        for key in ("head_bias", "mlp_head"):
            if key in config:
                raise ValueError(
                    f"{type(self).__name__}: {key} customization is not supported (the head is BN + linear)"
                )

        self.reparameterized = False
        embed_dims: list[int] = list(config["embed_dims"])
        depths: list[int] = list(config["depths"])
        partial_dims: list[int] = list(config["partial_dims"])
        if not len(embed_dims) == len(depths) == len(partial_dims) == len(_QK_DIMS):
            raise ValueError(
                f"{type(self).__name__}: embed_dims, depths and partial_dims need {len(_QK_DIMS)} entries each, "
                f"got {len(embed_dims)}, {len(depths)} and {len(partial_dims)}"
            )

        stem_dim = embed_dims[0]
        widths = [self.input_channels, stem_dim // 8, stem_dim // 4, stem_dim // 2, stem_dim]
        stem: list[nn.Module] = []
        for i in range(4):
            if i > 0:
                stem.append(nn.ReLU())
            stem.append(
                Conv2dBN(
                    widths[i],
                    widths[i + 1],
                    kernel_size=(3, 3),
                    stride=(2, 2),
                    padding=(1, 1),
                    reparameterized=self.reparameterized,
                )
            )
        self.stem = nn.Sequential(*stem)

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        prev_dim = stem_dim
        for i, (dim, depth, partial_dim) in enumerate(zip(embed_dims, depths, partial_dims)):
            stages[f"stage{i + 1}"] = StageBlock(
                prev_dim=prev_dim,
                dim=dim,
                qk_dim=_QK_DIMS[i],
                partial_dim=partial_dim,
                use_shsa=_USE_SHSA[i],
                depth=depth,
                reparameterized=self.reparameterized,
            )
            prev_dim = dim

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_stages = self.return_stages[: len(depths)]
        self.return_channels = embed_dims
        self.embedding_size = embed_dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 64
        self.stem_stride = 16
        self.stem_width = stem_dim
        self.feature_dim = embed_dims[-1]

    def create_classifier(
        self, embed_dim: Optional[int] = None, head_bias: Optional[bool] = None, mlp_head: Optional[bool] = None
    ) -> nn.Module:
        """Always Birder's BN + linear head (a reparameterized net gets a plain linear)."""

        if head_bias is not None or mlp_head is not None:
            raise ValueError(f"{type(self).__name__}: head_bias / mlp_head customization is not supported")
        if self.num_classes == 0:
            return nn.Identity()

        return NormLinear(embed_dim or self.embedding_size, self.num_classes, self.reparameterized)

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize_model(self) -> None:
        """Fold every BN and conv residual; inference only afterwards (the state_dict layout changes)."""

        if self.reparameterized is True:
            return

        for module in self.modules():
            if hasattr(module, "reparameterize") is True:
                module.reparameterize()  # type: ignore[operator]

        self.reparameterized = True
