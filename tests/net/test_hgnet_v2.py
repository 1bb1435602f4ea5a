"""HGNet v2: Birder-exact on its fixtures, every name builds, and the behaviour Birder's class offers."""

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

from birder_exp.model_registry import registry
from birder_exp.net.hgnet_v1 import EseModule
from birder_exp.net.hgnet_v1 import LearnableAffineBlock
from birder_exp.net.hgnet_v2 import HGNet_v2

FIXTURES = fixture_names("hgnet_v2")
TINY_CONFIG = {
    "stem_channels": [8, 16],
    "stage1": [16, 8, 24, 1, False, False, 3, 2],
    "stage2": [24, 8, 32, 1, True, False, 3, 2],
    "stage3": [32, 16, 48, 2, True, True, 5, 2],
    "stage4": [48, 16, 64, 1, True, True, 5, 2],
    "use_lab": True,
    "drop_path_rate": 0.0,
}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("hgnet_v2_test_tiny", HGNet_v2, config=TINY_CONFIG)
    return "hgnet_v2_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("hgnet_v2", "HGNet_v2", 7, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("hgnet_v2") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_no_ese_and_learnable_affines(tiny: str) -> None:
    net = build(tiny)
    assert not any(isinstance(m, EseModule) for m in net.modules())
    assert isinstance(net.features[3], LearnableAffineBlock)
    assert isinstance(net.body.stage1.blocks[0].layers[0].lab, LearnableAffineBlock)
    assert net.body.stage1.blocks[0].aggregation[0].conv.out_channels == 12  # Half, then the full width

    no_lab = HGNet_v2(3, 10, config={**TINY_CONFIG, "use_lab": False})
    assert not any(isinstance(m, LearnableAffineBlock) for m in no_lab.modules())


def test_stem(tiny: str) -> None:
    """Two branches on the padded first conv's output (2x2/1 max pool, two 2x2 convs) concatenated; stride 4."""

    stem = build(tiny).eval().stem
    x = torch.randn(2, 3, 17, 23)
    with torch.inference_mode():
        y = F.pad(stem.stem1(x), (0, 1, 0, 1))
        branches = torch.concat([stem.pool(y), stem.stem2b(F.pad(stem.stem2a(y), (0, 1, 0, 1)))], dim=1)
        out = stem(x)
        torch.testing.assert_close(out, stem.stem4(stem.stem3(branches)))
    assert out.shape == (2, 16, 5, 6)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(HGNet_v2, "hgnet_v2_test_custom", TINY_CONFIG, 2048)


def test_bad_config() -> None:
    check_bad_config(HGNet_v2)
    with pytest.raises(ValueError, match="use_lab"):
        HGNet_v2(3, 10, config={k: v for k, v in TINY_CONFIG.items() if k != "use_lab"})
    with pytest.raises(ValueError, match=r"stem_channels must be \[mid, out\]"):
        HGNet_v2(3, 10, config={**TINY_CONFIG, "stem_channels": [8, 8, 16]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
