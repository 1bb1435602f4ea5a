"""RegNet Z: Birder-exact on both fixtures, and the behaviour Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.regnet_z import RegNet_Z

FIXTURES = fixture_names("regnet_z")
TINY_CONFIG = {"depth": 5, "w_0": 8, "w_a": 24.0, "w_m": 1.5, "group_width": 8, "num_features": 48}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("regnet_z_test_tiny", RegNet_Z, config=TINY_CONFIG)
    return "regnet_z_test_tiny"


def test_catalogue() -> None:
    assert sorted(check_family_catalogue("regnet_z", "RegNet_Z", 2, pretrain_encoder=True)) == sorted(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(RegNet_Z, "regnet_z_test_custom", TINY_CONFIG, 48)


def test_bad_config() -> None:
    check_bad_config(RegNet_Z)
    with pytest.raises(ValueError, match="got w_0=4"):
        RegNet_Z(3, 10, config={**TINY_CONFIG, "w_0": 4})


def test_inverted_bottleneck_and_residuals(tiny: str) -> None:
    """4x expansion inside every block; an identity residual only where the shape is kept; SE everywhere."""

    net = build(tiny).eval()
    blocks = [block for stage in net.body for block in stage.block]
    assert [block.shortcut for block in blocks] == [False, False, False, False, True]
    last = blocks[-1]
    assert last.f.block[0][0].out_channels == 4 * 88
    assert all(isinstance(block.f.block[2], SqueezeExcitation) for block in blocks)
    x = torch.randn(2, 88, 2, 3)
    with torch.inference_mode():
        torch.testing.assert_close(last(x), x + last.f(x))


def test_head_widens_to_num_features(tiny: str) -> None:
    net = build(tiny).eval()
    assert (net.feature_dim, net.embedding_size) == (88, 48)
    with torch.inference_mode():
        assert net.forward_features(image()).shape == (2, 88, 2, 3)
        assert net.embedding(image()).shape == (2, 48)


def test_decoder_block(tiny: str) -> None:
    net = build(tiny)
    decoder = net.decoder_block(64)
    assert isinstance(decoder.block[0][2], torch.nn.SiLU)
    assert decoder(torch.randn(1, 64, 4, 4)).shape == (1, 64, 4, 4)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=3, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
