import json
from pathlib import Path
from typing import Any

import conformance
import pytest
import torch
import torch.nn.functional as F
from conformance import check_layout
from conformance import check_outputs
from conformance import fill_v1
from conformance import fixture_names
from conformance import has_outputs
from conformance import load_fixture
from torch import nn
from vit_checks import GRID
from vit_checks import SIZE
from vit_checks import TINY
from vit_checks import image

from birder_exp.layers import patch_embed as patch_embed_module
from birder_exp.layers.activations import QuickGELU
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.ffn import FFN
from birder_exp.layers.ffn import SwiGLU_FFN
from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.layers.layer_scale import LayerScale
from birder_exp.layers.moe import SoftMoE_FFN
from birder_exp.model_registry import registry
from birder_exp.net import vit as vit_module
from birder_exp.net.vit import Attention
from birder_exp.net.vit import EncoderBlock
from birder_exp.net.vit import ViT

FAMILY = "vit"
CATALOGUE = Path(__file__).parents[2] / "birder_exp" / "model_registry" / "catalogue" / "vit.json"


def tiny(num_classes: int = 5, size: tuple[int, int] = SIZE, seed: int = 0, **config: Any) -> ViT:
    torch.manual_seed(seed)
    net = ViT(3, num_classes, config={**TINY, **config}, size=size)
    with torch.no_grad():  # Zero-initialised tokens and head would hide ordering mistakes
        for param in net.parameters():
            param.add_(0.1 * torch.randn_like(param))

    return net.eval()


# Birder-exactness
#
# Many fixtures share most of their state_dict (vit_l14, vit_reg4_l14, deit3_l14 ... have the same block keys
# and shapes), and fill v1 depends only on a key and its shape. Within one size group the filled tensors are
# computed once and shared (assigned, not copied) between the networks under test, which turns ~20G random
# draws into ~2.5G. Groups run on one xdist worker each (--dist loadgroup) and in order otherwise.


def _size_group(name: str) -> str:
    cfg = load_fixture(name)["config"]
    return f"vit-{cfg['hidden_dim']}x{cfg['num_layers']}"


NAMES = sorted(fixture_names(FAMILY), key=lambda name: (_size_group(name), name))


class _FillCache:
    def __init__(self) -> None:
        self.group: str | None = None
        self.values: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def state_for(self, name: str, net: nn.Module) -> dict[str, torch.Tensor]:
        """Fill-v1 values for every state_dict entry of ``net``, drawing only the entries not seen yet."""

        group = _size_group(name)
        if group != self.group:
            self.values.clear()
            self.group = group

        layout = {key: (tuple(t.shape), t.dtype) for key, t in net.state_dict().items()}
        missing = {key: spec for key, spec in layout.items() if (key, *spec) not in self.values}
        if len(missing) > 0:
            holder = nn.Module()  # Same keys, so conformance.fill_v1 itself draws the values
            for key, (shape, dtype) in missing.items():
                *path, leaf = key.split(".")
                module = holder
                for part in path:
                    if not hasattr(module, part):
                        module.add_module(part, nn.Module())
                    module = getattr(module, part)
                module.register_buffer(leaf, torch.empty(shape, dtype=dtype))
            fill_v1(holder)
            for key, tensor in holder.state_dict().items():
                self.values[(key, *layout[key])] = tensor

        return {key: self.values[(key, *spec)] for key, spec in layout.items()}


_CACHE = _FillCache()


def cached_build_filled(name: str, num_classes: int = 10) -> nn.Module:
    """conformance.build_filled, with fill-v1 values shared across the fixtures of a size group."""

    with torch.device("meta"):
        net = registry.net_factory(name, num_classes)
    net.to_empty(device="cpu")
    net.load_state_dict(_CACHE.state_for(name, net), strict=True, assign=True)
    net.recompute_buffers(torch.device("cpu"))
    return net.eval()


def test_every_architecture_has_a_fixture() -> None:
    assert len(NAMES) == 127
    builtin = {name for name, spec in registry.specs.items() if spec.family == FAMILY and spec.builtin is True}
    assert set(NAMES) == builtin


def test_catalogue_matches_fixture_configs() -> None:
    with open(CATALOGUE, encoding="utf-8") as handle:
        table = json.load(handle)

    assert table["family"] == FAMILY
    assert table["class"] == "ViT"
    assert len(table["architectures"]) == 127
    for name in NAMES:
        fixture = load_fixture(name)
        arch = table["architectures"][name]
        assert arch["config"] == fixture["config"], name
        assert arch["default_size"] == fixture["default_size"], name
        spec = registry.get_spec(name)
        assert spec.config == fixture["config"]
        assert list(spec.default_size) == fixture["default_size"]
        assert spec.detector_backbone is True and spec.pretrain_encoder is True


def test_cached_fill_equals_conformance_fill() -> None:
    """The shared-values build is the conformance build (BatchNorm stats and int buffers included)."""

    name = "vit_b16_hmlp_bn"
    ours = cached_build_filled(name).state_dict()
    reference = conformance.build_filled(name).state_dict()
    assert list(ours) == list(reference)
    for key, tensor in reference.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.xdist_group(_size_group(name))) for name in NAMES]
)
def test_conformance(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if has_outputs(name):
        monkeypatch.setattr(conformance, "build_filled", cached_build_filled)
        check_outputs(name)
    else:
        check_layout(name)  # Structure-only giants: the layout on the meta device


# Building blocks and config options


def test_public_names_and_reexports() -> None:
    assert vit_module.PatchEmbed is patch_embed_module.PatchEmbed
    assert vit_module.hMLPStem is patch_embed_module.hMLPStem
    assert vit_module.adjust_position_embedding is patch_embed_module.adjust_position_embedding
    for name in ("ViT", "Attention", "EncoderBlock", "Encoder", "apply_attention_mask"):
        assert hasattr(vit_module, name)
    assert registry.get_model_class("vit_b16").__mro__[1] is ViT


def _blocks(net: ViT) -> list[EncoderBlock]:
    return list(net.encoder.block)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "check"),
    [
        ({}, lambda n: isinstance(n.conv_proj, nn.Conv2d) and n.conv_proj.bias is not None),
        ({"pre_norm": True}, lambda n: n.conv_proj.bias is None and isinstance(n.encoder.pre_block[0], nn.LayerNorm)),
        ({"dropout": 0.1, "pre_norm": True}, lambda n: isinstance(n.encoder.pre_block[0], nn.Dropout)),
        ({}, lambda n: isinstance(n.norm, nn.LayerNorm) and isinstance(n.embedding_norm, nn.Identity)),
        (
            {"norm_after_pool": True},
            lambda n: isinstance(n.norm, nn.Identity) and isinstance(n.embedding_norm, nn.LayerNorm),
        ),
        ({"post_norm": False}, lambda n: isinstance(n.norm, nn.Identity) and isinstance(n.embedding_norm, nn.Identity)),
        ({"norm_layer_type": "RMSNorm"}, lambda n: isinstance(n.norm, nn.RMSNorm)),
        ({"norm_layer_eps": 1e-5}, lambda n: n.norm.eps == 1e-5 and _blocks(n)[0].norm1.eps == 1e-5),
        (
            {"layer_scale_init_value": 1e-5},
            lambda n: (
                isinstance(_blocks(n)[1].layer_scale_2, LayerScale)
                and torch.allclose(_blocks(n)[1].layer_scale_1.gamma, torch.full((32,), 1e-5), atol=0.5)
            ),
        ),
        ({}, lambda n: isinstance(_blocks(n)[0].layer_scale_1, nn.Identity)),
        ({"qk_norm": True}, lambda n: _blocks(n)[0].attn.q_norm.normalized_shape == (16,)),
        ({"qkv_bias": False}, lambda n: _blocks(n)[0].attn.qkv.bias is None),
        ({"attn_norm": True}, lambda n: _blocks(n)[0].attn.norm.normalized_shape == (32,)),
        ({"mlp_layer_type": "SwiGLU_FFN"}, lambda n: isinstance(_blocks(n)[0].mlp.act, nn.SiLU)),
        (
            {"mlp_layer_type": "Norm_SwiGLU_FFN"},
            lambda n: isinstance(_blocks(n)[0].mlp, SwiGLU_FFN) and isinstance(_blocks(n)[0].mlp.norm, nn.LayerNorm),
        ),
        ({"act_layer_type": "quick_gelu"}, lambda n: isinstance(_blocks(n)[0].mlp[1], QuickGELU)),
        ({}, lambda n: isinstance(_blocks(n)[0].mlp, FFN) and isinstance(_blocks(n)[0].mlp[1], nn.GELU)),
        (
            {"mlp_layer_type": "SoftMoE_FFN", "soft_moe_num_experts": 3, "soft_moe_num_slots": 2, "num_layers": 4},
            lambda n: (
                [type(b.mlp) for b in _blocks(n)] == [FFN, FFN, SoftMoE_FFN, SoftMoE_FFN]
                and _blocks(n)[3].mlp.slot_embeds.shape == (3, 2, 32)
            ),
        ),
        ({"stem_type": "hmlp", "patch_size": 16}, lambda n: isinstance(n.conv_proj[1], LayerNorm2d)),
        (
            {"stem_type": "hmlp", "patch_size": 16, "stem_norm_layer_type": "BatchNorm2d"},
            lambda n: isinstance(n.conv_proj[1], nn.BatchNorm2d),
        ),
        (
            {"attn_pool_head": True},
            lambda n: isinstance(n.attn_pool, MultiHeadAttentionPool) and n.attn_pool.num_heads == 2,
        ),
        (
            {"attn_pool_head": True, "attn_pool_type": "EfficientProbing"},
            lambda n: isinstance(n.attn_pool, EfficientProbing) and n.attn_pool.num_heads == 1,
        ),
        ({"attn_pool_head": True, "attn_pool_num_heads": 4}, lambda n: n.attn_pool.num_heads == 4),
        ({"abs_pos_embed": False}, lambda n: n.pos_embedding is None),
        ({"num_reg_tokens": 4}, lambda n: n.pos_embedding.shape == (1, 4 + 1 + 24, 32)),
        ({"num_reg_tokens": 4, "pos_embed_special_tokens": False}, lambda n: n.pos_embedding.shape == (1, 24, 32)),
        ({"drop_path_rate": 0.2}, lambda n: [b.drop_path.p for b in _blocks(n)] == pytest.approx([0.0, 0.1, 0.2])),
        (
            {"drop_path_rate": 0.2, "drop_path_uniform": True},
            lambda n: [b.drop_path.p for b in _blocks(n)] == pytest.approx([0.2] * 3),
        ),
        ({"out_indices": [0, -1]}, lambda n: n.return_stages == ["stage1", "stage2"] and n.out_indices == [0, 2]),
    ],
)
def test_config_options_build_the_right_modules(config: dict[str, Any], check: Any) -> None:
    size = (32, 48) if config.get("stem_type") != "hmlp" else (32, 32)
    assert check(tiny(size=size, **config)) is True


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mlp_layer_type": "MLP"}, "unknown mlp_layer_type 'MLP'"),
        ({"norm_layer_type": "BatchNorm"}, "unknown norm_layer_type 'BatchNorm'"),
        ({"stem_type": "conv"}, "unknown stem_type 'conv'"),
        ({"stem_norm_layer_type": "LayerNorm2d"}, "only supported with stem_type='hmlp'"),
        ({"stem_type": "hmlp"}, "requires patch_size=16"),
        ({"mlp_layer_type": "SoftMoE_FFN"}, "soft_moe_num_experts must be set"),
        ({"soft_moe_num_experts": 4}, "soft_moe_num_experts must be set"),
        ({"attn_pool_head": True, "attn_pool_type": "Mean"}, "unknown attn_pool_type 'Mean'"),
        ({"pos_embed_interpolation_mode": "nearest"}, "unknown pos_embed_interpolation_mode"),
        ({"num_heads": 3}, "must be divisible by num_heads"),
        ({"act_layer_type": "swish"}, "unknown activation 'swish'"),
    ],
)
def test_bad_config_fails_with_one_clear_line(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ViT(3, 5, config={**TINY, **config}, size=SIZE)
    assert "\n" not in str(info.value)


def test_missing_config_and_bad_size() -> None:
    with pytest.raises(ValueError, match="needs a config"):
        ViT(3, 5, size=SIZE)
    with pytest.raises(ValueError, match="missing required keys: mlp_dim"):
        ViT(3, 5, config={k: v for k, v in TINY.items() if k != "mlp_dim"}, size=SIZE)
    with pytest.raises(ValueError, match="divisible by patch_size 8"):
        ViT(3, 5, config=TINY, size=(30, 48))
    with pytest.raises(ValueError, match="divisible by patch_size 8"):
        tiny().adjust_size((36, 48))


# Token layout, pooling, heads


def test_token_layout_and_pooling() -> None:
    """[REG..., CLS, PATCH...]; the embedding is the class token (after the registers)."""

    net = tiny(num_reg_tokens=2)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        features = net.forward_features(x)
        assert features.shape == (2, 2 + 1 + 24, 32)
        assert net.num_special_tokens == 3
        assert torch.equal(net.embedding_from_features(features), features[:, 2])
        assert torch.equal(net.flatten_features(features, include_special_tokens=False), features[:, 3:])
        assert torch.allclose(net(x), net.classify(net.embedding(x)))


def test_average_pooling_without_class_token() -> None:
    net = tiny(num_reg_tokens=1, class_token=False, norm_after_pool=True)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        features = net.forward_features(x)
        assert features.shape == (2, 1 + 24, 32)
        expected = F.layer_norm(
            features[:, 1:].mean(dim=1), (32,), net.embedding_norm.weight, net.embedding_norm.bias, 1e-6
        )
        assert torch.allclose(net.embedding_from_features(features), expected, atol=1e-6)


@pytest.mark.parametrize("special", [False, True])
def test_attention_pool_head_sees_special_tokens_only_when_asked(special: bool) -> None:
    net = tiny(num_reg_tokens=2, attn_pool_head=True, attn_pool_special_tokens=special)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        features = net.forward_features(x)
        assert net.attn_pool is not None
        pooled = net.attn_pool(features if special is True else features[:, 3:])[:, 0]
        assert torch.equal(net.embedding_from_features(features), pooled)


def test_return_input_embedding() -> None:
    net = tiny(num_reg_tokens=1)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        stacked = net.forward_features(x, return_input_embedding=True)
        assert stacked.shape == (2, 2 + 24, 32, 2)
        assert torch.equal(stacked[..., 1], net.forward_features(x))
        patches = net.conv_proj(x).flatten(2).transpose(1, 2)
        assert torch.allclose(stacked[:, 2:, :, 0], patches)
        assert net.reg_tokens is not None and net.class_token is not None
        assert torch.equal(stacked[:, 0, :, 0], net.reg_tokens[0, 0].expand(2, -1))
        assert torch.equal(stacked[:, 1, :, 0], net.class_token[0, 0].expand(2, -1))


def test_reset_classifier_and_headless() -> None:
    net = tiny()
    net.reset_classifier(7)
    assert isinstance(net.classifier, nn.Linear) and net.classifier.out_features == 7
    with torch.inference_mode():
        assert net(image(1, 3, *SIZE)).shape == (1, 7)
    headless = tiny(num_classes=0)
    assert isinstance(headless.classifier, nn.Identity)
    with torch.inference_mode():
        assert headless(image(1, 3, *SIZE)).shape == (1, 32)


# Attention


def test_attention_goes_through_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    net = tiny()
    with torch.inference_mode():
        net(image(1, 3, *SIZE))
    assert len(calls) == 3


def test_explicit_attention_weights_match_fast_path() -> None:
    torch.manual_seed(0)
    attn = Attention(32, 4, attn_drop=0.0, proj_drop=0.0, qk_norm=True).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.rand(7, 7) > 0.4
    mask.fill_diagonal_(True)
    with torch.inference_mode():
        fast, none = attn(x, attn_mask=mask)
        slow, weights = attn(x, need_weights=True, attn_mask=mask)
        _, averaged = attn(x, need_weights=True, average_attn_weights=True, attn_mask=mask)
    assert none is None
    assert torch.allclose(fast, slow, atol=1e-6)
    assert weights is not None and weights.shape == (2, 4, 7, 7)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 4, 7))
    assert torch.all(weights[:, :, mask.logical_not()] == 0)
    assert averaged is not None and torch.allclose(averaged, weights.mean(dim=1))


def test_causal_attention_and_masks() -> None:
    net = tiny(num_reg_tokens=1)
    x = image(2, 3, *SIZE)
    n = 2 + 24
    causal_bool = torch.ones(n, n, dtype=torch.bool).tril()
    causal_float = torch.zeros(n, n).masked_fill(causal_bool.logical_not(), float("-inf"))
    with torch.inference_mode():
        reference = net.forward_features(x, attn_mask=causal_bool)
        assert torch.allclose(net.forward_features(x, attn_mask=causal_float), reference, atol=1e-5)
        net.set_causal_attention(True)
        assert torch.allclose(net.forward_features(x), reference, atol=1e-5)
        # A full mask adds nothing to causality; explicit weights give the same tokens
        everything = torch.ones(n, n, dtype=torch.bool)
        assert torch.allclose(net.forward_features(x, attn_mask=everything), reference, atol=1e-5)
        net.encoder.set_need_attn(True)
        assert torch.allclose(net.forward_features(x, attn_mask=everything), reference, atol=1e-5)
        assert torch.allclose(net.forward_features(x), reference, atol=1e-5)
        net.encoder.set_need_attn(False)
        net.set_causal_attention(False)
        assert not torch.allclose(net.forward_features(x), reference, atol=1e-3)

    moe = tiny(mlp_layer_type="SoftMoE_FFN", soft_moe_num_experts=2, num_layers=2)
    with pytest.raises(ValueError, match="SoftMoE_FFN does not support causal attention"):
        moe.set_causal_attention(True)


# Resolution and channels


def test_adjust_size_resizes_pos_embedding() -> None:
    net = tiny(num_reg_tokens=2)
    assert net.pos_embedding is not None
    old = net.pos_embedding.detach().clone()
    net.adjust_size((48, 64))
    assert net.size == (48, 64)
    assert net.pos_embedding.shape == (1, 3 + 6 * 8, 32)
    assert torch.equal(net.pos_embedding[:, :3], old[:, :3])  # Special tokens untouched
    grid = old[:, 3:].reshape(1, 4, 6, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 8), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 48, 32)
    assert torch.allclose(net.pos_embedding[:, 3:], expected, atol=1e-6)
    with torch.inference_mode():
        assert net.forward_features(image(1, 3, 48, 64)).shape == (1, 3 + 48, 32)
        assert net.detection_features(image(1, 3, 48, 64))["stage1"].shape == (1, 32, 6, 8)

    with pytest.raises(RuntimeError):  # Without dynamic size, the old resolution no longer fits
        net.forward_features(image(1, 3, *SIZE))


def test_adjust_size_without_special_token_positions() -> None:
    net = tiny(num_reg_tokens=2, pos_embed_special_tokens=False, pos_embed_interpolation_mode="bilinear")
    net.adjust_size((16, 16))
    assert net.pos_embedding is not None and net.pos_embedding.shape == (1, 4, 32)
    with torch.inference_mode():
        assert net(image(1, 3, 16, 16)).shape == (1, 5)


def test_dynamic_size() -> None:
    net = tiny(num_reg_tokens=1)
    x = image(1, 3, *SIZE)
    with torch.inference_mode():
        fixed = net(x)
        net.set_dynamic_size()
        assert torch.equal(net(x), fixed)  # The native size needs no resize
        assert net.forward_features(image(1, 3, 64, 24)).shape == (1, 2 + 8 * 3, 32)
        stages = net.detection_features(image(1, 3, 64, 24))
        assert stages["stage1"].shape == (1, 32, 8, 3)

        # On the fly, the resize is what adjust_size would store (with the forward's antialias setting)
        resized = tiny(num_reg_tokens=1)
        resized.adjust_size((64, 24))
        assert resized.pos_embedding is not None
        net.pos_embed_antialias = True
        assert torch.allclose(net._get_pos_embed(64, 24), resized.pos_embedding)  # type: ignore[arg-type]


def test_adjust_input_channels_grey_matches_replicated_rgb() -> None:
    for config in ({}, {"stem_type": "hmlp", "patch_size": 16}):
        net = tiny(size=(32, 32), **config)
        grey = image(1, 1, 32, 32)
        with torch.inference_mode():
            rgb_out = net(grey.expand(1, 3, 32, 32))
        net.adjust_input_channels(1)
        assert net.input_channels == 1 and net._get_input_conv().in_channels == 1
        with torch.inference_mode():
            assert torch.allclose(net(grey), rgb_out, atol=1e-5)


# Training helpers


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = image(2, 3, *SIZE)
    grads = []
    for enable, segments in ((False, None), (True, None), (True, 2)):
        net = tiny(num_reg_tokens=1, layer_scale_init_value=0.1).train()
        net.set_grad_checkpointing(enable, segments=segments)
        assert net.encoder.grad_checkpointing is enable
        net(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})

    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name, grad in grads[0].items():
            assert torch.allclose(other[name], grad, atol=1e-6), name

    net = tiny()
    net.set_grad_checkpointing()
    with pytest.raises(ValueError, match="cannot be returned"):
        net.encoder.set_need_attn()
    net.set_grad_checkpointing(False)
    net.encoder.set_need_attn()
    with pytest.raises(ValueError, match="cannot be enabled"):
        net.set_grad_checkpointing()


def test_gradient_checkpointing_with_causal_mask() -> None:
    x = image(2, 3, *SIZE)
    grads = []
    for enable in (False, True):
        net = tiny().train()
        net.set_causal_attention()
        net.set_grad_checkpointing(enable)
        net(x).sum().backward()
        assert net.conv_proj.weight.grad is not None
        grads.append(net.conv_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_freeze() -> None:
    net = tiny(attn_pool_head=True, norm_after_pool=True)
    net.freeze()
    assert not any(p.requires_grad for p in net.parameters())
    net.freeze(freeze_classifier=False)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    net.freeze(freeze_classifier=False, unfreeze_features=True)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"classifier", "embedding_norm", "attn_pool"}


def test_freeze_stages() -> None:
    net = tiny(out_indices=[0, 2])
    net.freeze_stages(0)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"conv_proj.weight", "conv_proj.bias", "pos_embedding"}
    net.freeze_stages(1)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.block.0.") for n in frozen)
    assert not any(n.startswith("encoder.block.1.") for n in frozen)


def test_decoder_block_and_pretrain_attributes() -> None:
    net = tiny(mlp_layer_type="SoftMoE_FFN", soft_moe_num_experts=2, num_layers=2)
    block = net.decoder_block(64)
    assert isinstance(block, EncoderBlock) and isinstance(block.mlp, FFN)
    assert block.attn.num_heads == 16 and block.mlp[0].out_features == 256
    assert (net.stem_stride, net.stem_width, net.max_stride, net.embedding_size) == (8, 32, 8, 32)
    swiglu = tiny(mlp_layer_type="SwiGLU_FFN").decoder_block(64)
    assert isinstance(swiglu.mlp, SwiGLU_FFN)


# Detector backbone and masked encoding


def test_detection_features() -> None:
    net = tiny(num_reg_tokens=2, post_norm=False)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert list(stages) == ["stage1"] and net.return_channels == [32]
        tokens = net.forward_features(x)[:, 3:]
        assert stages["stage1"].shape == (2, 32, *GRID)
        assert torch.equal(stages["stage1"], tokens.transpose(1, 2).reshape(2, 32, *GRID))

    multi = tiny(out_indices=[0, 2])
    with torch.inference_mode():
        stages = multi.detection_features(x)
    assert list(stages) == ["stage1", "stage2"] and multi.return_channels == [32, 32]
    assert all(s.shape == (2, 32, *GRID) for s in stages.values())

    multi.strip_for_detection_features()
    assert isinstance(multi.classifier, nn.Identity) and isinstance(multi.norm, nn.Identity)


def test_masked_encoding_omission() -> None:
    net = tiny(num_reg_tokens=2)
    x = image(2, 3, *SIZE)
    ids_keep = torch.tensor([[0, 5, 7, 23], [1, 2, 3, 4]])
    with torch.inference_mode():
        out = net.masked_encoding_omission(x, ids_keep, return_keys="all")
        assert out["tokens"].shape == (2, 3 + 4, 32)
        assert out["embedding"].shape == (2, 32)
        assert torch.equal(out["embedding"], out["tokens"][:, 2])
        assert set(net.masked_encoding_omission(x, ids_keep)) == {"tokens"}
        assert set(net.masked_encoding_omission(x, ids_keep, return_keys="embedding")) == {"embedding"}

        every = net.masked_encoding_omission(x, ids_keep, return_all_features=True, return_keys="all")
        assert every["tokens"].shape == (2, 3 + 4, 32, 3)
        assert torch.allclose(every["tokens"][..., -1], out["tokens"], atol=1e-6)
        assert torch.allclose(every["embedding"], out["embedding"], atol=1e-6)

        # Keeping every patch in order is the plain forward; kept patches keep their positions
        assert torch.allclose(net.masked_encoding_omission(x)["tokens"], net.forward_features(x), atol=1e-6)
        in_order = torch.arange(24).expand(2, -1)
        assert torch.allclose(net.masked_encoding_omission(x, in_order)["tokens"], net.forward_features(x), atol=1e-6)


def test_masked_encoding_omission_without_special_positions() -> None:
    net = tiny(num_reg_tokens=1, class_token=False, pos_embed_special_tokens=False)
    x = image(2, 3, *SIZE)
    with torch.inference_mode():
        out = net.masked_encoding_omission(x, torch.tensor([[0, 1], [2, 3]]), return_keys="all")
        assert out["tokens"].shape == (2, 1 + 2, 32)
        assert torch.allclose(net.masked_encoding_omission(x)["tokens"], net.forward_features(x), atol=1e-6)


def test_masked_encoding_retention() -> None:
    net = tiny(num_reg_tokens=1)
    x = image(2, 3, *SIZE)
    mask = torch.zeros(2, 24)
    with torch.inference_mode():
        out = net.masked_encoding_retention(x, mask, return_keys="all")
        assert out["features"].shape == (2, 32, *GRID)
        assert out["embedding"].shape == (2, 32)
        tokens = net.forward_features(x)
        assert torch.allclose(out["features"], tokens[:, 2:].transpose(1, 2).reshape(2, 32, *GRID), atol=1e-6)
        assert torch.allclose(out["embedding"], net.embedding(x), atol=1e-6)

        # Masked patches are replaced by the mask token before the encoder
        mask[0, 3] = 1.0
        token = torch.randn(1, 1, 32)
        masked = net.masked_encoding_retention(x, mask, mask_token=token, return_keys="features")
        assert set(masked) == {"features"}
        assert not torch.allclose(masked["features"][0], out["features"][0], atol=1e-4)
        assert torch.allclose(masked["features"][1], out["features"][1], atol=1e-6)


# Meta-device build


def test_meta_build_load_assign_recompute_equals_normal_build() -> None:
    name = "vit_reg1_t16"
    reference = registry.net_factory(name, 10)
    fill_v1(reference)
    state = reference.state_dict()
    normal = registry.net_factory(name, 10)
    normal.load_state_dict(state)
    with torch.device("meta"):
        lazy = registry.net_factory(name, 10)
    lazy.load_state_dict(state, assign=True)
    lazy.recompute_buffers(torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in lazy.state_dict().values())
    x = image(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(lazy.eval()(x), normal.eval()(x))


# TorchScript (Birder exports ViTs as scripted modules)


@pytest.mark.parametrize(
    "config",
    [
        {"num_reg_tokens": 2},
        {"class_token": False, "attn_pool_head": True, "attn_pool_type": "EfficientProbing"},
        {"mlp_layer_type": "SoftMoE_FFN", "soft_moe_num_experts": 2, "num_layers": 2},
        {"stem_type": "hmlp", "patch_size": 16, "mlp_layer_type": "Norm_SwiGLU_FFN", "qk_norm": True},
        {"pre_norm": True, "act_layer_type": "quick_gelu", "norm_layer_type": "RMSNorm", "layer_scale_init_value": 0.1},
    ],
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
def test_scriptable(config: dict[str, Any]) -> None:
    net = tiny(size=(32, 32), **config)
    scripted = torch.jit.script(net)
    x = image(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
