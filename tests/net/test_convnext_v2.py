"""ConvNeXt v2: Birder-exact on every registered name, GRN, and the FCMAE encoder interface."""

from collections.abc import Callable

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_catalogue
from cnn_checks import check_custom_variant
from cnn_checks import check_fixture
from cnn_checks import check_grad_checkpointing
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names

from birder_exp.model_registry import registry
from birder_exp.net.convnext_v1 import ConvNeXtNet
from birder_exp.net.convnext_v2 import GRN
from birder_exp.net.convnext_v2 import ConvNeXt_v2
from birder_exp.net.convnext_v2 import ConvNeXtBlock

NAMES = fixture_names("convnext_v2")
SMALL = "convnext_v2_atto"
TINY_CONFIG = {"in_channels": [8, 16, 24, 32], "num_layers": [1, 1, 2, 1], "drop_path_rate": 0.0}


@pytest.mark.parametrize("name", NAMES)
def test_birder_exact(name: str) -> None:
    check_fixture(name)


def test_catalogue() -> None:
    check_catalogue("convnext_v2", NAMES, count=10)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ConvNeXt_v2, "convnext_v2_test_custom", TINY_CONFIG, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(ConvNeXt_v2)


def test_v1_and_v2_are_separate_families() -> None:
    """They share a skeleton, but filtering by class keeps each family to itself (as in Birder)."""

    from birder_exp.net.convnext_v1 import ConvNeXt_v1

    assert not issubclass(ConvNeXt_v2, ConvNeXt_v1)
    assert issubclass(ConvNeXt_v2, ConvNeXtNet)
    v2_names = registry.list_models(net_type=ConvNeXt_v2)
    assert sorted(v2_names) == sorted(NAMES)
    assert not any(name.startswith("convnext_v2") for name in registry.list_models(net_type=ConvNeXt_v1))


def test_grn_matches_its_definition() -> None:
    """gamma * (x * Nx) + beta + x with Nx = ||x||_HW / mean_C ||x||_HW (our one-pass form must agree)."""

    grn = GRN(12)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(3, 5, 7, 12)
    gx = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    expected = grn.gamma * (x * nx) + grn.beta + x
    torch.testing.assert_close(grn(x), expected)

    zero = GRN(12)  # Initialised as the identity
    torch.testing.assert_close(zero(x), x)


def test_classifier_init_is_scaled_down() -> None:
    torch.manual_seed(0)
    net = ConvNeXt_v2(3, 10, config=TINY_CONFIG)
    assert net.classifier.weight.std() < 0.02 * 5e-3  # trunc_normal(std=0.02) scaled by 1e-3
    assert net.body.stage1[0].block[3].weight.std() > 0.01  # Other layers keep their init
    assert not any(isinstance(m, GRN) for m in net.features.modules())


@pytest.mark.parametrize("check", STANDARD_CHECKS.values(), ids=STANDARD_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None]) -> None:
    check(SMALL)


def test_return_channels() -> None:
    tiny = registry.net_factory("convnext_v2_tiny", 10)
    assert tiny.return_channels == [96, 192, 384, 768]
    assert tiny.return_stages == ["stage1", "stage2", "stage3", "stage4"]


def test_fcmae_usage() -> None:
    """What FCMAE does with the encoder: mask per max-stride cell, project the features, decode with its block."""

    encoder = build(SMALL, num_classes=0).eval()
    size = (64, 64)
    h, w = size[0] // encoder.max_stride, size[1] // encoder.max_stride
    mask = torch.zeros(4, h * w)
    mask[:, torch.randperm(h * w)[: int(0.6 * h * w)]] = 1.0
    x = image(batch=4, size=size)
    latent = encoder.masked_encoding_retention(x, mask, return_keys="features")
    assert list(latent) == ["features"]
    features = latent["features"]
    assert features.shape == (4, encoder.feature_dim, h, w)

    proj = torch.nn.Conv2d(encoder.feature_dim, 512, kernel_size=1)
    decoder = torch.nn.Sequential(encoder.decoder_block(512))
    assert isinstance(decoder[0], ConvNeXtBlock)
    assert decoder[0].stochastic_depth.p == 0.0
    pred = torch.nn.Conv2d(512, encoder.max_stride**2 * 3, kernel_size=1)(decoder(proj(features)))
    assert pred.shape == (4, 32 * 32 * 3, h, w)
    pred.sum().backward()
    assert encoder.stem[0].weight.grad is not None


def test_gradient_checkpointing() -> None:
    net = ConvNeXt_v2(3, 10, config=TINY_CONFIG)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, GRN):
                m.gamma.normal_()
    check_grad_checkpointing(net, segments=3)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
