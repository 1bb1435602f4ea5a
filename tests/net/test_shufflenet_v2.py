"""ShuffleNet v2: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour
from staged_checks import family_names

from birder_exp.layers.channel_shuffle import channel_shuffle
from birder_exp.model_registry import registry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.shufflenet_v2 import ShuffleNet_v2

FIXTURES = fixture_names("shufflenet_v2")
TINY_CONFIG = {"out_channels": [8, 16, 32, 48, 64]}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("shufflenet_v2_test_tiny", ShuffleNet_v2, config=TINY_CONFIG)
    return "shufflenet_v2_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("shufflenet_v2", "ShuffleNet_v2", 4, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("shufflenet_v2") if n not in FIXTURES])
def test_meta_build(name: str) -> None:
    """Every name builds; stage widths and head width follow its config (stage1 is the stem's max pooling)."""

    with torch.device("meta"):
        net = registry.net_factory(name, 10)
    assert isinstance(net, DetectorBackbone) and not isinstance(net, PreTrainEncoder)
    widths = registry.get_spec(name).config["out_channels"]
    assert net.return_channels == widths[:-1]
    assert [len(stage) for stage in list(net.body)[1:]] == [4, 8, 4]
    for stage, width in zip(list(net.body)[1:], widths[1:-1]):
        assert stage[-1].branch2[-1][0].out_channels * 2 == width
    assert net.classifier.in_features == net.embedding_size == widths[-1]


def test_channel_shuffle() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, groups=2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_unstrided_unit_keeps_half(tiny: str) -> None:
    unit = build(tiny).eval().body.stage2[1]
    x = torch.randn(2, 16, 4, 4)
    with torch.inference_mode():
        out = unit(x)
    # Before the shuffle the first half is the input's first half, untouched
    torch.testing.assert_close(out[:, 0::2], x[:, :8])


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ShuffleNet_v2, "shufflenet_v2_test_custom", TINY_CONFIG, 64)


def test_bad_config() -> None:
    check_bad_config(ShuffleNet_v2)
    with pytest.raises(ValueError, match="out_channels must be 5 widths"):
        ShuffleNet_v2(3, 10, config={"out_channels": [8, 16, 32, 64]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
