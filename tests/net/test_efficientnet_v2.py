"""EfficientNet v2: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

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

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.model_registry import registry
from birder_exp.net.efficientnet_v2 import EfficientNet_v2
from birder_exp.net.efficientnet_v2 import FusedMBConv

FIXTURES = fixture_names("efficientnet_v2")
# As a JSON catalogue gives it: kernels and strides as lists
TINY_CONFIG = {
    "expand_ratio": [1, 4, 4, 6, 6],
    "kernel_size": [[3, 3], [3, 3], [3, 3], [3, 3], [5, 5]],
    "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
    "in_channels": [8, 8, 16, 24, 32],
    "out_channels": [8, 16, 24, 32, 48],
    "repeats": [2, 2, 1, 2, 1],
    "dropout_rate": 0.1,
    "last_channels": 64,
}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("efficientnet_v2_test_tiny", EfficientNet_v2, config=TINY_CONFIG)
    return "efficientnet_v2_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("efficientnet_v2", "EfficientNet_v2", 4, pretrain_encoder=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("efficientnet_v2") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_fused_then_mbconv(tiny: str) -> None:
    net = build(tiny).eval()
    blocks = [block for stage in net.body for block in stage]
    assert [type(block) for block in blocks] == [FusedMBConv] * 5 + [InvertedResidual] * 3
    # No expansion: one kxk conv; with expansion: kxk then a linear 1x1
    assert len(blocks[0].block) == 1 and blocks[0].block[0][0].kernel_size == (3, 3)
    assert [m[0].kernel_size for m in blocks[2].block] == [(3, 3), (1, 1)] and len(blocks[2].block[1]) == 2
    assert not any(isinstance(m, SqueezeExcitation) for block in blocks[:5] for m in block.modules())
    assert all(isinstance(block.block[2], SqueezeExcitation) for block in blocks[5:])
    # List strides from JSON act as tuples: residuals where the shape is kept
    assert [block.use_res_connect for block in blocks[:5]] == [True, True, False, True, False]
    assert [block.shortcut for block in blocks[5:]] == [False, True, False]
    x = torch.randn(2, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(blocks[0](x), x + blocks[0].block(x))

    assert net.return_channels == [16, 24, 32, 48]
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (8, 48, 64)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(EfficientNet_v2, "efficientnet_v2_test_custom", TINY_CONFIG, 64)


def test_bad_config() -> None:
    check_bad_config(EfficientNet_v2)
    with pytest.raises(ValueError, match=r"one entry per block group.*got lengths \[5, 5, 5, 5, 5, 4\]"):
        EfficientNet_v2(3, 10, config={**TINY_CONFIG, "repeats": [1, 1, 1, 1]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=3, checkpoint_segments=3, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
