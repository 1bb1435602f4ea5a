import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conformance import check_layout
from conformance import check_outputs
from conformance import fixture_names
from conformance import has_outputs
from conformance import load_fixture
from torch import nn
from vit_checks import GRID
from vit_checks import SIZE
from vit_checks import TINY
from vit_checks import image

from birder_exp.layers.activations import QuickGELU
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.ffn import FFN
from birder_exp.layers.ffn import SwiGLU_FFN
from birder_exp.layers.layer_scale import LayerScale
from birder_exp.layers.moe import SoftMoE_FFN
from birder_exp.layers.rope import build_rotary_pos_embed
from birder_exp.model_registry import registry
from birder_exp.net import rope_vit as rope_vit_module
from birder_exp.net.rope_vit import MAEDecoderBlock
from birder_exp.net.rope_vit import RoPE_ViT

FAMILY = "rope_vit"
NAMES = fixture_names(FAMILY)
CATALOGUE = Path(__file__).parents[2] / "birder_exp" / "model_registry" / "catalogue" / "rope_vit.json"


def tiny(num_classes: int = 5, size: tuple[int, int] = SIZE, seed: int = 0, **config: Any) -> RoPE_ViT:
    torch.manual_seed(seed)
    return RoPE_ViT(3, num_classes, config={**TINY, **config}, size=size).eval()


# Birder-exactness


@pytest.fixture(scope="module", autouse=True)
def _single_thread_per_worker() -> Iterator[None]:
    """Two xdist workers on two cores: one BLAS thread each avoids oversubscription on the big fixtures."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_architecture_has_a_fixture() -> None:
    assert len(NAMES) == 92
    builtin = {name for name, spec in registry.specs.items() if spec.family == FAMILY and spec.builtin is True}
    assert set(NAMES) == builtin


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name: str) -> None:
    if has_outputs(name):
        check_outputs(name)
    else:
        check_layout(name)


def test_catalogue_matches_fixture_configs() -> None:
    with open(CATALOGUE, encoding="utf-8") as handle:
        table = json.load(handle)

    assert (table["family"], table["class"], table["task"]) == ("rope_vit", "RoPE_ViT", "image_classification")
    for name in NAMES:
        fixture = load_fixture(name)
        spec = registry.get_spec(name)
        assert spec.family == FAMILY
        assert spec.config == fixture["config"], name
        assert list(spec.default_size) == fixture["default_size"], name
        assert spec.detector_backbone is True and spec.pretrain_encoder is True


@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("pe_spatial_t16", "rope_i_vit_reg1_t16_pn_npn_avg_c1"),
        ("pe_spatial_s16", "rope_i_vit_reg1_s16_pn_npn_avg_c1"),
        ("pe_spatial_b16", "rope_i_vit_reg1_b16_pn_npn_avg_c1"),
    ],
)
def test_pe_spatial_aliases_resolve(alias: str, target: str) -> None:
    assert registry.exists(alias)
    assert registry.get_spec(alias).name == target
    assert alias not in registry.list_models()
    with torch.device("meta"):
        net = registry.net_factory(alias, 10)
    assert isinstance(net, RoPE_ViT)
    assert type(net).__name__ == target


def test_usage_example_custom_config(clean_registry: None) -> None:
    name = "rope_vit_reg4_b14_custom"
    config = {
        "patch_size": 14,
        "num_layers": 12,
        "num_heads": 12,
        "hidden_dim": 768,
        "mlp_dim": 3072,
        "drop_path_rate": 0.15,
        "num_reg_tokens": 4,
        "attn_pool_head": True,
        "rope_temperature": 10000.0,
    }
    registry.register_model_config(name, RoPE_ViT, config=config)
    try:
        assert registry.exists(name)
        assert name in registry.list_models()
        assert name in registry.list_models(include_filter="rope_vit_reg4_*", net_type=RoPE_ViT)
        spec = registry.get_spec(name)
        assert spec.config == config
        assert spec.family == FAMILY
        assert spec.task == "image_classification"
        assert tuple(spec.default_size) == (224, 224)
        assert spec.detector_backbone is True and spec.pretrain_encoder is True

        with torch.device("meta"):
            net = registry.net_factory(name, 10)
        assert isinstance(net, RoPE_ViT)
        assert net.num_reg_tokens == 4
        assert isinstance(net.attn_pool, MultiHeadAttentionPool)
        assert net.rope.temperature == 10000.0
        assert registry.get_registered_name(net) == name
    finally:
        registry._specs.pop(name, None)

    assert registry.exists(name) is False


# Configuration -> modules


@pytest.mark.parametrize(
    ("config", "check"),
    [
        ({"num_reg_tokens": 3}, lambda n: n.reg_tokens.shape == (1, 3, 32) and n.num_special_tokens == 4),
        ({"class_token": False}, lambda n: n.class_token is None and n.num_special_tokens == 0),
        ({"pre_norm": True}, lambda n: isinstance(n.encoder.pre_block[0], nn.LayerNorm) and n.conv_proj.bias is None),
        ({"post_norm": False}, lambda n: isinstance(n.norm, nn.Identity) and isinstance(n.embedding_norm, nn.Identity)),
        (
            {"norm_after_pool": True},
            lambda n: isinstance(n.norm, nn.Identity) and isinstance(n.embedding_norm, nn.LayerNorm),
        ),
        ({"layer_scale_init_value": 0.1}, lambda n: isinstance(n.encoder.block[0].layer_scale_1, LayerScale)),
        ({"qk_norm": True}, lambda n: isinstance(n.encoder.block[0].attn.q_norm, nn.LayerNorm)),
        ({"attn_norm": True}, lambda n: isinstance(n.encoder.block[0].attn.norm, nn.LayerNorm)),
        ({"mlp_layer_type": "SwiGLU_FFN"}, lambda n: isinstance(n.encoder.block[0].mlp.act, nn.SiLU)),
        (
            {"mlp_layer_type": "Norm_SwiGLU_FFN", "norm_layer_type": "RMSNorm"},
            lambda n: isinstance(n.encoder.block[0].mlp.norm, nn.RMSNorm) and isinstance(n.norm, nn.RMSNorm),
        ),
        ({"act_layer_type": "quick_gelu"}, lambda n: isinstance(n.encoder.block[0].mlp[1], QuickGELU)),
        ({"attn_pool_head": True}, lambda n: isinstance(n.attn_pool, MultiHeadAttentionPool)),
        (
            {"attn_pool_head": True, "attn_pool_type": "EfficientProbing"},
            lambda n: isinstance(n.attn_pool, EfficientProbing),
        ),
        ({"abs_pos_embed": False}, lambda n: n.pos_embedding is None),
        ({"pos_embed_special_tokens": False}, lambda n: n.pos_embedding.shape == (1, 24, 32)),
        ({"stem_type": "hmlp", "patch_size": 16}, lambda n: isinstance(n.conv_proj, nn.Sequential)),
        (
            {"mlp_layer_type": "SoftMoE_FFN", "soft_moe_num_experts": 4},
            lambda n: isinstance(n.encoder.block[0].mlp, FFN) and isinstance(n.encoder.block[2].mlp, SoftMoE_FFN),
        ),
        ({"rope_temperature": 10000.0}, lambda n: n.rope.temperature == 10000.0),
    ],
)
def test_config_options_build_the_right_modules(config: dict[str, Any], check: Any) -> None:
    size = (32, 48) if config.get("patch_size", 8) == 8 else (32, 64)
    net = tiny(size=size, **config)
    assert check(net)
    assert net(image(2, 3, *size)).shape == (2, 5)


def test_swiglu_default_mlp_layer() -> None:
    assert isinstance(tiny(mlp_layer_type="SwiGLU_FFN").encoder.block[1].mlp, SwiGLU_FFN)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mlp_layer_type": "MLP"}, "unknown mlp_layer_type 'MLP'"),
        ({"norm_layer_type": "BatchNorm"}, "unknown norm_layer_type 'BatchNorm'"),
        ({"stem_type": "conv"}, "unknown stem_type 'conv'"),
        ({"stem_type": "hmlp"}, "requires patch_size=16"),
        ({"stem_norm_layer_type": "BatchNorm2d"}, "only supported with stem_type='hmlp'"),
        ({"attn_pool_head": True, "attn_pool_type": "Max"}, "unknown attn_pool_type 'Max'"),
        ({"mlp_layer_type": "SoftMoE_FFN"}, "soft_moe_num_experts must be set"),
        ({"pos_embed_interpolation_mode": "nearest"}, "unknown pos_embed_interpolation_mode 'nearest'"),
        ({"rope_style": "axial"}, "requires rope_rot_type='interleaved'"),
        ({"num_heads": 5}, "must be divisible by num_heads"),
    ],
)
def test_bad_config_fails_with_one_clear_line(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**config)


def test_missing_config_and_bad_size() -> None:
    with pytest.raises(ValueError, match="needs a config"):
        RoPE_ViT(3, 10)
    with pytest.raises(ValueError, match="missing required keys: mlp_dim"):
        RoPE_ViT(3, 10, config={k: v for k, v in TINY.items() if k != "mlp_dim"})
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny(size=(30, 48))


# Forward contract


def test_token_layout_and_pooling() -> None:
    x = image(2, 3, *SIZE)
    net = tiny(num_reg_tokens=2)
    features = net.forward_features(x)
    assert features.shape == (2, 3 + 24, 32)
    # Class token sits after the registers
    torch.testing.assert_close(net.embedding_from_features(features), features[:, 2])
    torch.testing.assert_close(net(x), net.classify(net.embedding(x)))
    assert net.flatten_features(features, include_special_tokens=False).shape == (2, 24, 32)

    avg = tiny(num_reg_tokens=2, class_token=False)
    features = avg.forward_features(x)
    torch.testing.assert_close(avg.embedding_from_features(features), features[:, 2:].mean(dim=1))

    nap = tiny(norm_after_pool=True, class_token=False)
    features = nap.forward_features(x)
    torch.testing.assert_close(nap.embedding_from_features(features), nap.embedding_norm(features.mean(dim=1)))


@pytest.mark.parametrize("special", [False, True])
def test_attention_pool_head_sees_special_tokens_only_when_asked(special: bool) -> None:
    net = tiny(num_reg_tokens=2, class_token=False, attn_pool_head=True, attn_pool_special_tokens=special)
    features = net.forward_features(image(2, 3, *SIZE))
    tokens = features if special is True else features[:, 2:]
    assert net.attn_pool is not None
    torch.testing.assert_close(net.embedding(image(2, 3, *SIZE)), net.attn_pool(tokens)[:, 0])


def test_return_input_embedding() -> None:
    net = tiny(num_reg_tokens=1)
    x = image(2, 3, *SIZE)
    stacked = net.forward_features(x, return_input_embedding=True)
    assert stacked.shape == (2, 26, 32, 2)
    torch.testing.assert_close(stacked[..., 1], net.forward_features(x))
    patches = net.patch_embed(net.conv_proj(x))
    torch.testing.assert_close(stacked[:, 2:, :, 0], patches)


def test_attention_goes_through_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs.get("scale"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(rope_vit_module.F, "scaled_dot_product_attention", counting)
    tiny()(image(1, 3, *SIZE))
    assert calls == [16**-0.5] * 3


def test_special_tokens_are_not_rotated() -> None:
    # [REG, CLS, patches...]: only the patch part of q / k is rotated
    net = tiny(abs_pos_embed=False, num_reg_tokens=1)
    attn = net.encoder.block[0].attn
    q = image(1, 2, 2 + 24, 16)
    rope = net.rope.pos_embed
    out = attn._rotate(q, rope)
    torch.testing.assert_close(out[:, :, :2], q[:, :, :2])
    assert not torch.allclose(out[:, :, 2:], q[:, :, 2:])


# Resolution, channels, classifier


def test_rope_table_follows_config_options() -> None:
    net = tiny(rope_grid_indexing="xy", rope_grid_offset=1, rope_rot_type="interleaved", rope_temperature=10000.0)
    sin, cos = build_rotary_pos_embed(16, 10000.0, GRID, "xy", 1, None)
    torch.testing.assert_close(net.rope.pos_embed, torch.concat((sin, cos), dim=-1))

    pt = tiny(pt_grid_size=[8, 8])
    assert pt.rope.pt_grid_size == (8, 8)
    sin, cos = build_rotary_pos_embed(16, 100.0, GRID, "ij", 0, (8, 8))
    torch.testing.assert_close(pt.rope.pos_embed, torch.concat((sin, cos), dim=-1))


def test_adjust_size_resizes_pos_embedding_and_rope() -> None:
    net = tiny(num_reg_tokens=2)
    prefix = net.pos_embedding[:, :3].detach().clone()  # type: ignore[index]
    net.adjust_size((64, 32))
    assert net.size == (64, 32)
    assert net.pos_embedding is not None and net.pos_embedding.shape == (1, 3 + 8 * 4, 32)
    torch.testing.assert_close(net.pos_embedding[:, :3], prefix)
    assert net.rope.grid_size == (8, 4)
    sin, cos = build_rotary_pos_embed(16, 100.0, (8, 4), "ij", 0, None)
    torch.testing.assert_close(net.rope.pos_embed, torch.concat((sin, cos), dim=-1))
    assert net(image(1, 3, 64, 32)).shape == (1, 5)
    # The MAE decoder block factory follows the new grid
    assert net.decoder_block(64).rope.grid_size == (8, 4)

    with pytest.raises(ValueError, match="not divisible by patch_size"):
        net.adjust_size((60, 32))


def test_dynamic_size() -> None:
    net = tiny()
    other = image(1, 3, 48, 24)
    with pytest.raises(RuntimeError):
        net(other)

    net.set_dynamic_size()
    assert net(other).shape == (1, 5)
    # At the built size dynamic mode changes nothing
    x = image(1, 3, *SIZE)
    net.set_dynamic_size(False)
    ref = net(x)
    net.set_dynamic_size()
    torch.testing.assert_close(net(x), ref)
    assert net.detection_features(other)["stage1"].shape == (1, 32, 6, 3)


def test_adjust_input_channels_grey_matches_replicated_rgb() -> None:
    net = tiny()
    grey = image(1, 1, *SIZE)
    ref = net(grey.expand(1, 3, *SIZE))
    net.adjust_input_channels(1)
    assert net.conv_proj.in_channels == 1 and net.input_channels == 1
    torch.testing.assert_close(net(grey), ref, rtol=1e-4, atol=1e-5)

    hmlp = tiny(stem_type="hmlp", patch_size=16, size=(32, 64))
    hmlp.adjust_input_channels(4)
    assert hmlp.conv_proj[0].in_channels == 4
    assert hmlp(image(1, 4, 32, 64)).shape == (1, 5)


def test_reset_classifier_and_headless() -> None:
    net = tiny()
    net.reset_classifier(7)
    assert net(image(1, 3, *SIZE)).shape == (1, 7)
    net.reset_classifier(0)
    assert isinstance(net.classifier, nn.Identity)
    assert net(image(1, 3, *SIZE)).shape == (1, 32)
    assert tiny(mlp_head=True).classifier[0].out_features == 96


# Training helpers


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = image(2, 3, *SIZE)
    grads = []
    for enable in (False, True):
        net = tiny(seed=3).train()
        net.set_grad_checkpointing(enable, segments=2)
        assert net.encoder.grad_checkpointing is enable
        net(x).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})

    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], msg=key)


def test_causal_attention() -> None:
    net = tiny(class_token=False, abs_pos_embed=False)
    x = image(1, 3, *SIZE)
    net.set_causal_attention()
    out = net.forward_features(x)
    # Changing the last patch cannot reach the first token
    x2 = x.clone()
    x2[..., -8:, -8:] += 1.0
    out2 = net.forward_features(x2)
    torch.testing.assert_close(out[:, 0], out2[:, 0])
    assert not torch.allclose(out[:, -1], out2[:, -1])

    # A boolean mask is folded together with causality
    allow = torch.ones(1, 1, 24, 24, dtype=torch.bool)
    torch.testing.assert_close(net.forward_features(x, attn_mask=allow), out)

    with pytest.raises(ValueError, match="SoftMoE_FFN does not support causal attention"):
        tiny(mlp_layer_type="SoftMoE_FFN", soft_moe_num_experts=2).set_causal_attention()


def test_freeze_and_freeze_stages() -> None:
    net = tiny(attn_pool_head=True, out_indices=[0, 2])
    net.freeze(freeze_classifier=False, unfreeze_features=True)
    trainable = {k for k, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith(("classifier", "norm", "attn_pool")) for k in trainable)

    net = tiny(out_indices=[0, 2])
    net.freeze_stages(1)
    assert net.conv_proj.weight.requires_grad is False
    assert all(p.requires_grad is False for p in net.encoder.block[0].parameters())
    assert all(p.requires_grad is True for p in net.encoder.block[1].parameters())


def test_mae_decoder_block() -> None:
    net = tiny(num_reg_tokens=1)
    block = net.decoder_block(64)  # 16 heads of 4 channels
    assert isinstance(block, MAEDecoderBlock)
    assert block.rope.grid_size == GRID
    tokens = image(2, 2 + 24, 64)
    assert block(tokens).shape == tokens.shape


# Detector backbone and masked encoding


def test_detection_features() -> None:
    x = image(2, 3, *SIZE)
    net = tiny(num_reg_tokens=1)
    assert net.return_stages == ["stage1"] and net.return_channels == [32]
    stages = net.detection_features(x)
    assert list(stages) == ["stage1"]
    assert stages["stage1"].shape == (2, 32, *GRID)
    # The last stage is the encoder output before the post-norm, patch tokens as a map
    tokens = net.forward_features(x)[:, 2:]
    ln = net.norm
    torch.testing.assert_close(ln(stages["stage1"].flatten(2).transpose(1, 2)), tokens)

    multi = tiny(out_indices=[0, -1])
    stages = multi.detection_features(x)
    assert list(stages) == ["stage1", "stage2"] and multi.return_channels == [32, 32]
    assert all(s.shape == (2, 32, *GRID) for s in stages.values())

    multi.strip_for_detection_features()
    assert multi.detection_features(x)["stage2"].shape == (2, 32, *GRID)


def test_masked_encoding_omission() -> None:
    x = image(2, 3, *SIZE)
    net = tiny(num_reg_tokens=2)
    everything = torch.arange(24).expand(2, 24)
    full = net.masked_encoding_omission(x, everything, return_keys="all")
    torch.testing.assert_close(full["tokens"], net.forward_features(x))
    torch.testing.assert_close(full["embedding"], net.embedding(x))

    ids_keep = torch.stack([torch.randperm(24, generator=torch.Generator().manual_seed(i))[:10] for i in range(2)])
    kept = net.masked_encoding_omission(x, ids_keep)
    assert list(kept) == ["tokens"]
    assert kept["tokens"].shape == (2, 3 + 10, 32)

    all_layers = net.masked_encoding_omission(x, ids_keep, return_all_features=True, return_keys="all")
    assert all_layers["tokens"].shape == (2, 13, 32, 3)
    torch.testing.assert_close(all_layers["tokens"][..., -1], kept["tokens"])
    assert net.masked_encoding_omission(x, ids_keep, return_keys="embedding")["embedding"].shape == (2, 32)


def test_masked_encoding_retention() -> None:
    x = image(2, 3, *SIZE)
    net = tiny(num_reg_tokens=1)
    nothing = torch.zeros(2, 24)
    out = net.masked_encoding_retention(x, nothing, return_keys="all")
    assert out["features"].shape == (2, 32, *GRID)
    tokens = net.forward_features(x)
    torch.testing.assert_close(out["features"], tokens[:, 2:].transpose(1, 2).reshape(2, 32, *GRID))
    torch.testing.assert_close(out["embedding"], net.embedding(x))

    mask = (torch.rand(2, 24, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    masked = net.masked_encoding_retention(x, mask, mask_token=torch.zeros(32))
    assert list(masked) == ["features"]
    assert not torch.allclose(masked["features"], out["features"])


# Meta-device build


def test_meta_build_assign_load_equals_normal_load() -> None:
    config = {"num_reg_tokens": 1, "rope_grid_indexing": "xy", "rope_grid_offset": 1, "rope_rot_type": "interleaved"}
    source = tiny(seed=7, **config)
    state = source.state_dict()
    x = image(2, 3, *SIZE)

    normal = tiny(seed=11, **config)
    normal.load_state_dict(state, strict=True)

    with torch.device("meta"):
        meta = RoPE_ViT(3, 5, config={**TINY, **config}, size=SIZE)
    assert meta.rope.pos_embed.is_meta
    meta.load_state_dict(state, strict=True, assign=True)
    meta.recompute_buffers(torch.device("cpu"))
    meta.eval()

    for (key, a), (_, b) in zip(normal.named_buffers(), meta.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=key)
    torch.testing.assert_close(meta(x), normal(x))
    torch.testing.assert_close(meta(x), source(x))

    # Same head dim (256 / 16 heads = 32 / 2 heads) and RoPE options: the decoder's table is the encoder's
    with torch.device("meta"):
        decoder = meta.decoder_block(256)
    decoder.to_empty(device="cpu")
    decoder.rope.compute_buffers(torch.device("cpu"))
    torch.testing.assert_close(decoder.rope.pos_embed, meta.rope.pos_embed)
