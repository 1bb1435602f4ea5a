"""MobileNet v3 (large and small): Birder-exact on its fixtures, every name builds, and Birder's behaviour."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_detection_features
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torch import nn
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.mobilenet_v3 import MobileNet_v3

FIXTURES = fixture_names("mobilenet_v3")
SMALL = "mobilenet_v3_small_0_25"
LARGE = "mobilenet_v3_large_0_25"


def test_catalogue() -> None:
    names = check_family_catalogue("mobilenet_v3", "MobileNet_v3", 16, pretrain_encoder=False)
    assert sum("_large_" in name for name in names) == 8


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("mobilenet_v3") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_small_has_an_empty_stage0() -> None:
    net = build(SMALL)
    assert [len(stage) for stage in net.body] == [0, 1, 2, 5, 3]
    assert net.return_channels == [8, 8, 16, 24]
    assert (net.stem_width, net.feature_dim, net.embedding_size, net.last_channels) == (8, 24, 144, 256)


def test_large_layout_and_squeeze_excitation() -> None:
    net = build(LARGE)
    assert [len(stage) for stage in net.body] == [1, 2, 3, 6, 3]
    se = [m for m in net.modules() if isinstance(m, SqueezeExcitation)]
    assert len(se) == 8 and all(isinstance(m.scale_activation, nn.Hardsigmoid) for m in se)
    # The squeeze width is a quarter of the expanded width, rounded to a multiple of 8
    first = net.body.stage2[0].block[2]
    assert (first.fc1.in_channels, first.fc1.out_channels) == (24, 8)
    activations = [type(block.block[0][2]) for stage in net.body for block in stage]
    assert activations == [nn.ReLU] * 6 + [nn.Hardswish] * 9


def test_mlp_head_is_the_default() -> None:
    net = build(SMALL)
    assert isinstance(net.classifier, nn.Sequential)
    assert [type(m) for m in net.classifier] == [nn.Linear, nn.Hardswish, nn.Dropout, nn.Linear]
    assert (net.classifier[0].in_features, net.classifier[0].out_features) == (144, 256)

    plain = registry.net_factory(SMALL, 10, config={"mlp_head": False})
    assert isinstance(plain.classifier, nn.Linear) and plain.classifier.in_features == 144
    no_bias = registry.net_factory(SMALL, 10, config={"head_bias": False})
    assert no_bias.classifier[3].bias is None


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(
        MobileNet_v3, "mobilenet_v3_test_custom", {"alpha": 0.1, "large": False, "mlp_head": False}, 96
    )


def test_bad_config() -> None:
    check_bad_config(MobileNet_v3)


def test_large_detection_features() -> None:
    check_detection_features(LARGE)


def test_mlp_head_forward() -> None:
    net = build(SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), net.classifier(net.embedding(x)))


def test_behaviour() -> None:
    check_staged_behaviour(SMALL, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
