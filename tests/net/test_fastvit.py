"""FastViT / MobileCLIP image towers: Birder-exact on the fixtures, every name built, re-parameterisation."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import build
from cnn_checks import check_adjust_input_channels
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_meta_build
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_map_masked_encoding
from family_checks import check_meta_builds_without_fixture
from family_checks import check_reparameterize_model
from family_checks import meta_build
from torch import nn

from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.model_registry import registry
from birder_exp.net.base import reparameterize_available
from birder_exp.net.fastvit import AttentionBlock
from birder_exp.net.fastvit import FastViT
from birder_exp.net.fastvit import RepCPE
from birder_exp.net.fastvit import RepMixer

FAMILY = "fastvit"
TINY: dict[str, Any] = {
    "layers": [1, 1, 1, 1],
    "embed_dims": [16, 16, 32, 32],
    "mlp_ratios": [2, 2, 2, 2],
    "se_downsamples": [False, False, True, True],
    "use_cpe": [False, False, False, True],
    "token_mixers": ["repmixer", "repmixer", "repmixer", "attention"],
    "layer_scale_init_value": 1e-5,
    "drop_path_rate": 0.0,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("fastvit_test_tiny", FastViT, config=TINY)
    return "fastvit_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, FastViT, 12)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 8
    i4 = meta_build("mobileclip_v2_i4")
    assert len(i4.body) == 5
    assert i4.return_stages == ["stage1", "stage2", "stage3", "stage4", "stage5"]
    assert i4.max_stride == 64 and i4.embedding_size == 4096
    assert isinstance(i4.body.stage5.blocks[0].norm, LayerNorm2d)
    assert i4.stem[0].rbr_scale is None  # stem_use_scale_branch False
    ma36 = meta_build("fastvit_ma36")
    assert isinstance(ma36.body.stage4.pos_emb, RepCPE)
    assert isinstance(ma36.body.stage4.blocks[0], AttentionBlock)
    assert isinstance(ma36.body.stage4.blocks[0].norm, nn.BatchNorm2d)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(FastViT, "fastvit_test_custom", TINY, expected_dim=64)


def test_bad_config() -> None:
    check_bad_config(FastViT)
    with pytest.raises(ValueError, match=r"one entry per stage .*mismatched: embed_dims"):
        FastViT(3, 10, config={**TINY, "embed_dims": [16, 16, 32]})
    with pytest.raises(ValueError, match=r"unknown norm_layer_type 'GroupNorm'"):
        FastViT(3, 10, config={**TINY, "norm_layer_type": "GroupNorm"})
    with pytest.raises(ValueError, match=r"token mixer 'pooling' is not one of"):
        FastViT(3, 10, config={**TINY, "token_mixers": ["pooling"] * 4})
    with pytest.raises(ValueError, match=r"dim \(48\) must be divisible by head_dim \(32\)"):
        FastViT(3, 10, config={**TINY, "embed_dims": [16, 16, 16, 48]})


def test_repmixer_folds_with_and_without_layer_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9)
    for init in (0.5, None):
        mixer = RepMixer(8, kernel_size=3, layer_scale_init_value=init, reparameterized=False)
        with torch.no_grad():
            for m in mixer.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
        mixer.eval()
        with torch.inference_mode():
            expected = mixer(x)
        mixer.reparameterize()
        assert list(mixer.state_dict()) == ["reparam_conv.weight", "reparam_conv.bias"]
        with torch.inference_mode():
            torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_reparameterize_model(small: str) -> None:
    """Folding keeps the outputs; the loader's path (meta build, fold, assign-load) reproduces the folded net."""

    torch.manual_seed(0)
    net = registry.net_factory(small, 10).eval()
    assert reparameterize_available(net)
    check_reparameterize_model(net, small, image(), (".rbr_", ".lkb_origin", ".mixer.", ".pe."), rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("clean_registry")
def test_five_stage_variant() -> None:
    """MobileCLIP v2 style: five stages (max stride 64), LayerNorm2d in attention blocks, no stem scale branch."""

    config = {
        **TINY,
        "layers": [1, 1, 1, 1, 1],
        "embed_dims": [16, 16, 32, 32, 64],
        "mlp_ratios": [2] * 5,
        "se_downsamples": [False] * 5,
        "use_cpe": [False, False, False, True, True],
        "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"],
        "norm_layer_type": "LayerNorm2d",
        "stem_use_scale_branch": False,
    }
    net = FastViT(3, 4, config=config, size=(64, 128)).eval()
    with torch.inference_mode():
        stages = net.detection_features(image(size=(64, 128)))
        assert [tuple(v.shape[1:]) for v in stages.values()] == [
            (16, 16, 32),
            (16, 8, 16),
            (32, 4, 8),
            (32, 2, 4),
            (64, 1, 2),
        ]
        assert net(image(size=(64, 128))).shape == (2, 4)


# Masked encoding, input channels (refused) and the meta build have their own tests below
_CHECKS = {
    key: check
    for key, check in STANDARD_CHECKS.items()
    if key not in ("masked_encoding", "adjust_input_channels", "meta_build")
}


@pytest.mark.parametrize("check", _CHECKS.values(), ids=_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_masked_encoding_retention(small: str) -> None:
    torch.manual_seed(0)
    check_map_masked_encoding(registry.net_factory(small, 10).eval(), image())


def test_adjust_input_channels_is_refused(small: str) -> None:
    """As in Birder: the stem's input conv is one branch of a MobileOne block, so it cannot be adapted."""

    with pytest.raises(RuntimeError, match="does not support input channel adjustment"):
        check_adjust_input_channels(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)
    assert build(small).max_stride == 32
