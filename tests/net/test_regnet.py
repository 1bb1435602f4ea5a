"""RegNet X / Y: Birder-exact on every fixture, every name builds, and the behaviour Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.regnet import RegNet
from birder_exp.net.regnet import stage_params

FIXTURES = fixture_names("regnet")
TINY_CONFIG = {"depth": 5, "w_0": 8, "w_a": 24.0, "w_m": 1.5, "group_width": 8, "se_ratio": 0.25}
SMALL = "regnet_y_200m"


@pytest.fixture
def tiny(clean_registry: None) -> str:
    """A four-stage RegNet Y small enough for behaviour checks (widths 8/24/64/88)."""

    registry.register_model_config("regnet_test_tiny", RegNet, config=TINY_CONFIG)
    return "regnet_test_tiny"


def test_catalogue() -> None:
    names = check_family_catalogue("regnet", "RegNet", 26, pretrain_encoder=True)
    assert sum(name.startswith("regnet_x_") for name in names) == 12
    assert sum(name.startswith("regnet_y_") for name in names) == 14


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("regnet") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_stage_params() -> None:
    """RegNetY-200MF as in the paper's Table: widths 24/56/152/368, depths 1/1/4/7."""

    params = stage_params(13, 24, 36.44, 2.49, 8, 1.0)
    assert [p.width for p in params] == [24, 56, 152, 368]
    assert [p.depth for p in params] == [1, 1, 4, 7]
    # Group width larger than the stage width is reduced to it
    assert stage_params(6, 8, 24.0, 1.5, 16, 1.0)[0].group_width == 8


def test_x_has_no_se_y_has_se() -> None:
    with torch.device("meta"):
        x_net = build_meta("regnet_x_200m")
        y_net = build_meta("regnet_y_200m")
    assert not any(isinstance(m, SqueezeExcitation) for m in x_net.modules())
    se = [m for m in y_net.modules() if isinstance(m, SqueezeExcitation)]
    assert len(se) == 13
    # The squeeze width follows the block input (a quarter of it), not the bottleneck width
    first = y_net.body.stage1.block[0].f.block[2]
    assert (first.fc1.in_channels, first.fc1.out_channels) == (24, 8)


def build_meta(name: str) -> RegNet:
    net = registry.net_factory(name, 10)
    assert isinstance(net, RegNet)
    return net


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(RegNet, "regnet_test_custom", TINY_CONFIG, 88)


def test_bad_config() -> None:
    check_bad_config(RegNet)
    with pytest.raises(ValueError, match="w_0 a positive multiple of 8, got w_0=12"):
        RegNet(3, 10, config={**TINY_CONFIG, "w_0": 12})
    with pytest.raises(ValueError, match="w_m > 1"):
        RegNet(3, 10, config={**TINY_CONFIG, "w_m": 1.0})


def test_pretrain_encoder_attributes() -> None:
    net = build(SMALL)
    assert (net.stem_stride, net.stem_width, net.max_stride, net.feature_dim) == (2, 32, 32, 368)
    decoder = net.decoder_block(64)
    x = torch.randn(1, 64, 4, 4)
    assert decoder(x).shape == x.shape
    assert decoder.block[1][0].groups == 1  # Group width 64 over 64 channels


def test_input_channels_not_adjustable(tiny: str) -> None:
    net = build(tiny)
    with pytest.raises(RuntimeError, match="does not support input channel adjustment"):
        net.adjust_input_channels(1)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2, checkpoint_segments=3, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
