import math
from typing import Any

import pytest
import torch
from cnn_checks import HIERA_SMALL
from cnn_checks import check_checkpointed_copy
from cnn_checks import check_fixture
from cnn_checks import check_gray_input
from cnn_checks import check_listed
from cnn_checks import check_loads_into
from cnn_checks import check_meta_build_exact
from cnn_checks import check_reset_classifier
from conformance import fixture_names

from birder_exp.model_registry import registry
from birder_exp.net.hiera import Hiera

SMALL = HIERA_SMALL
SIZE = (64, 64)


def small_hiera(abswin: bool = False, size: tuple[int, int] = SIZE, **overrides: Any) -> Hiera:
    config = {**SMALL, "abs_win_pos_embed": abswin, **overrides}
    return Hiera(3, 10, config=config, size=size).eval()


def image(batch: int = 2, size: tuple[int, int] = SIZE, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", fixture_names("hiera"))
def test_birder_exact(name: str) -> None:
    check_fixture(name)


def test_every_reference_name_is_listed() -> None:
    assert check_listed("hiera", 13, "hiera_abswin_base_plus_ap").config["attn_pool_head"] is True


@pytest.mark.usefixtures("clean_registry")
def test_register_model_config_custom_variant() -> None:
    registry.register_model_config("hiera_unit_test", Hiera, config={**SMALL, "abs_win_pos_embed": True})
    net = registry.net_factory("hiera_unit_test", 7, size=SIZE).eval()
    assert isinstance(net, Hiera)
    assert net.pos_embed_win is not None
    assert net(image()).shape == (2, 7)
    assert "hiera_unit_test" in registry.list_models(include_filter="hiera_unit*")


@pytest.mark.parametrize("abswin", [False, True])
def test_detection_features(abswin: bool) -> None:
    net = small_hiera(abswin)
    assert net.return_channels == [16, 32, 64, 128]
    stages = net.detection_features(image())
    assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
    for stride, channels, (name, out) in zip([4, 8, 16, 32], net.return_channels, stages.items()):
        assert out.shape == (2, channels, SIZE[0] // stride, SIZE[1] // stride), name

    # The last stage, rerolled to spatial order, carries the same tokens forward_features returns
    tokens = net.forward_features(image())
    assert torch.allclose(stages["stage4"].flatten(2).transpose(1, 2), tokens, atol=1e-6)

    net.return_stages = ["stage2", "stage4"]
    assert list(net.detection_features(image())) == ["stage2", "stage4"]


def test_masked_encoding_omission_shapes_and_full_keep() -> None:
    net = small_hiera(abswin=True)
    assert net.mask_spatial_shape == [2, 2]
    x = image()
    ids_keep = torch.tensor([[0, 3], [1, 2]])
    result = net.masked_encoding_omission(x, ids_keep, return_keys="all")
    # One token per kept mask unit once every q-pool has run
    assert result["tokens"].shape == (2, 2, 128)
    assert result["embedding"].shape == (2, 128)
    assert set(net.masked_encoding_omission(x, ids_keep, return_keys="embedding")) == {"embedding"}

    # Keeping every unit is the plain forward pass
    all_ids = torch.arange(4).repeat(2, 1)
    full = net.masked_encoding_omission(x, all_ids)["tokens"]
    assert torch.allclose(full, net.forward_features(x), atol=1e-5)
    assert torch.allclose(net.masked_encoding_omission(x)["tokens"], net.forward_features(x), atol=1e-6)

    with pytest.raises(ValueError, match="return_all_features"):
        net.masked_encoding_omission(x, ids_keep, return_all_features=True)


def test_masked_encoding_omission_masked_pixels_do_not_leak_into_local_stages() -> None:
    net = small_hiera()
    ids_keep = torch.tensor([[0, 3]])
    x = image(batch=1)
    y = x.clone()
    y[:, :, :32, 32:] = 5.0  # unit 1 (top right) is masked: its pixels must not matter
    a = net.masked_encoding_omission(x, ids_keep)["tokens"]
    b = net.masked_encoding_omission(y, ids_keep)["tokens"]
    assert torch.equal(a, b)


def test_masked_encoding_mae_hiera_interface() -> None:
    """MAE-Hiera calls masked_encoding(x, mask) with a (B, #units) mask where 1 means masked."""

    net = small_hiera(abswin=True, size=(128, 128))
    units = math.prod(net.mask_spatial_shape)
    assert units == 16
    mask = torch.zeros(2, units)
    mask[:, :10] = 1.0
    intermediates, keep = net.masked_encoding(image(size=(128, 128)), mask)
    assert keep.dtype == torch.bool and torch.equal(keep, mask == 0)
    assert len(intermediates) == 4
    for out, mu, channels in zip(intermediates, [8, 4, 2, 1], net.return_channels):
        assert out.shape == (2, 6, mu, mu, channels)


def test_adjust_size_loads_into_a_net_built_at_the_new_size() -> None:
    for abswin in (False, True):
        net = small_hiera(abswin)
        net.adjust_size((96, 128))
        assert net.size == (96, 128)
        assert net.mask_spatial_shape == [3, 4]
        out = net.detection_features(image(size=(96, 128)))
        assert out["stage1"].shape == (2, 16, 24, 32) and out["stage4"].shape == (2, 128, 3, 4)
        assert net(image(size=(96, 128))).shape == (2, 10)

        check_loads_into(net, small_hiera(abswin, size=(96, 128)), image(size=(96, 128)))


def test_input_channels_and_classifier() -> None:
    check_gray_input(small_hiera(), image(channels=1))
    check_reset_classifier(small_hiera(), image())


@pytest.mark.parametrize("pool_type", ["MultiHeadAttentionPool", "EfficientProbing"])
def test_attention_pool_heads(pool_type: str) -> None:
    net = small_hiera(abswin=True, attn_pool_head=True, attn_pool_type=pool_type)
    assert type(net.features[0]).__name__ == pool_type
    assert net.embedding(image()).shape == (2, 128)


def test_bad_config_is_reported() -> None:
    with pytest.raises(ValueError, match="attn_pool_type"):
        small_hiera(attn_pool_head=True, attn_pool_type="Nope")
    with pytest.raises(ValueError, match="q_pool"):
        small_hiera(q_pool=4)


def test_grad_checkpointing_matches_plain_training_step() -> None:
    x = image()
    plain = small_hiera().train()
    ckpt = check_checkpointed_copy(plain, x, segments=2)

    # MAE-Hiera's pass checkpoints stage by stage
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    a, _ = plain.masked_encoding(x, mask)
    b, _ = ckpt.masked_encoding(x, mask)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))

    ckpt.set_grad_checkpointing(False)
    assert ckpt._grad_checkpointing_blocks == ()


def test_dynamic_size_is_refused() -> None:
    net = small_hiera()
    net.set_dynamic_size(False)
    with pytest.raises(ValueError, match="dynamic size"):
        net.set_dynamic_size(True)


def test_meta_build_assign_load_equals_normal_build() -> None:
    check_meta_build_exact("hiera_abswin_tiny", SIZE)


def test_freeze_stages() -> None:
    net = small_hiera(abswin=True)
    net.freeze_stages(2)
    assert not net.pos_embed.requires_grad and net.pos_embed_win is not None and not net.pos_embed_win.requires_grad
    assert all(not p.requires_grad for p in net.body.stage2.parameters())
    assert all(p.requires_grad for p in net.body.stage3.parameters())
