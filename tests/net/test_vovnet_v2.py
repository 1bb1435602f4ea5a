"""VoVNet v2 (ESE-VoVNet): Birder-exact on its fixtures, every name builds, and the behaviour Birder's class
offers."""

import pytest
import torch
import torch.nn.functional as F
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
from torch import nn

from birder_exp.model_registry import registry
from birder_exp.net.vovnet_v2 import EffectiveSE
from birder_exp.net.vovnet_v2 import VoVNet_v2

FIXTURES = fixture_names("vovnet_v2")
TINY_CONFIG = {
    "stem_channels": [8, 8, 16],
    "stage_conv_channels": [8, 8, 16, 16],
    "stage_out_channels": [16, 24, 32, 48],
    "blocks_per_stage": [1, 1, 3, 1],
    "layers_per_block": 2,
}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("vovnet_v2_test_tiny", VoVNet_v2, config=TINY_CONFIG)
    return "vovnet_v2_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("vovnet_v2", "VoVNet_v2", 4, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("vovnet_v2") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_residual_and_ese_placement(tiny: str) -> None:
    """Residual on every block but a stage's first; effective SE on a stage's last block only."""

    net = build(tiny).eval()
    blocks = list(net.body.stage3.blocks)[1:]
    assert [b.residual for b in blocks] == [False, True, True]
    assert [isinstance(b.ese, EffectiveSE) for b in blocks] == [False, False, True]
    last = blocks[-1]
    x = torch.randn(2, 32, 4, 4)
    with torch.inference_mode():
        fused = last.concat_conv(torch.concat((x, last.mid_convs[0](x), last.mid_convs[1](last.mid_convs[0](x))), 1))
        gate = F.hardsigmoid(last.ese.fc(fused.mean(dim=(2, 3), keepdim=True)))
        torch.testing.assert_close(last(x), fused * gate + x)


def test_linear_bias_zero_init() -> None:
    with torch.device("meta"):
        assert isinstance(registry.net_factory("vovnet_v2_19", 10).classifier, nn.Linear)
    net = registry.net_factory("vovnet_v2_19", 10)
    assert torch.equal(net.classifier.bias, torch.zeros(10))


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(VoVNet_v2, "vovnet_v2_test_custom", TINY_CONFIG, 48)


def test_bad_config() -> None:
    check_bad_config(VoVNet_v2)
    with pytest.raises(ValueError, match="needs 3 stem_channels, 4 stage_conv_channels"):
        VoVNet_v2(3, 10, config={**TINY_CONFIG, "stem_channels": [8, 16]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
