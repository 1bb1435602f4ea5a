"""ConvNeXt v1: Birder-exact on every registered name, plus the behaviour users rely on."""

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

from birder_exp.net.convnext_v1 import ConvNeXt_v1
from birder_exp.net.convnext_v1 import ConvNeXtBlock

NAMES = fixture_names("convnext_v1")
SMALL = "convnext_v1_atto"
TINY_CONFIG = {"in_channels": [8, 16, 24, 32], "num_layers": [1, 1, 2, 1], "drop_path_rate": 0.1}


@pytest.mark.parametrize("name", NAMES)
def test_birder_exact(name: str) -> None:
    check_fixture(name)


def test_catalogue() -> None:
    check_catalogue("convnext_v1", NAMES, count=10)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ConvNeXt_v1, "convnext_v1_test_custom", TINY_CONFIG, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(ConvNeXt_v1)
    with pytest.raises(ValueError, match="equal length"):
        ConvNeXt_v1(3, 10, config={"in_channels": [8, 16], "num_layers": [1], "drop_path_rate": 0.0})


@pytest.mark.parametrize("check", STANDARD_CHECKS.values(), ids=STANDARD_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None]) -> None:
    check(SMALL)


def test_return_channels() -> None:
    assert build(SMALL).return_channels == [40, 80, 160, 320]


def test_masked_cells_ignore_their_pixels() -> None:
    """The patchify stem does not overlap cells: pixels under a masked 32x32 cell cannot reach the output."""

    net = build(SMALL).eval()
    x = image()
    mask = torch.zeros(2, 6)
    mask[:, 4] = 1.0  # Row 1, column 1 of the 2x3 grid
    y = x.clone()
    y[:, :, 32:64, 32:64] = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a = net.masked_encoding_retention(x, mask)["features"]
        b = net.masked_encoding_retention(y, mask)["features"]
    torch.testing.assert_close(a, b)


def test_pretrain_encoder_attributes() -> None:
    net = build(SMALL)
    assert (net.stem_stride, net.stem_width, net.max_stride, net.feature_dim) == (4, 40, 32, 320)
    block = net.decoder_block(512)
    assert isinstance(block, ConvNeXtBlock)
    assert block.stochastic_depth.p == 0.0
    x = torch.randn(2, 512, 2, 3)
    assert block(x).shape == x.shape


def test_layer_scale_init() -> None:
    net = ConvNeXt_v1(3, 10, config=TINY_CONFIG)
    scales = [m.layer_scale for m in net.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(scales) == 5
    assert all(torch.equal(s, torch.full_like(s, 1e-6)) for s in scales)


def test_drop_path_schedule() -> None:
    net = ConvNeXt_v1(3, 10, config=TINY_CONFIG)
    rates = [m.stochastic_depth.p for m in net.modules() if isinstance(m, ConvNeXtBlock)]
    assert rates == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    uniform = ConvNeXt_v1(3, 10, config={**TINY_CONFIG, "drop_path_uniform": True})
    assert [m.stochastic_depth.p for m in uniform.modules() if isinstance(m, ConvNeXtBlock)] == [0.1] * 5


def test_train_mode_drop_path() -> None:
    """Training drops whole residual branches per sample; eval is deterministic."""

    net = ConvNeXt_v1(3, 10, config={**TINY_CONFIG, "drop_path_rate": 0.9})
    for block in net.modules():
        if isinstance(block, ConvNeXtBlock):
            block.layer_scale.data.fill_(1.0)
    x = image()
    net.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    b = net(x)
    assert not torch.equal(a, b)
    net.eval()
    torch.testing.assert_close(net(x), net(x))


@pytest.mark.parametrize("segments", [None, 2])
def test_gradient_checkpointing(segments: int | None) -> None:
    check_grad_checkpointing(ConvNeXt_v1(3, 10, config={**TINY_CONFIG, "drop_path_rate": 0.0}), segments)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
