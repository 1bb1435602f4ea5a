"""PositionalEncodingFourier: sin / cos of the normalised grid index, projected by a 1x1 conv (XCiT, EdgeNeXt)."""

import math

import torch

from birder_exp.layers.fourier_position import PositionalEncodingFourier


def test_shape_and_batch_independence() -> None:
    pos = PositionalEncodingFourier(hidden_dim=32, dim=16)
    enc = pos(2, 3, 5)
    assert enc.shape == (2, 16, 3, 5)
    torch.testing.assert_close(enc[0], enc[1])
    assert not torch.allclose(enc[:, :, 0], enc[:, :, 1])


def test_raw_features_before_projection() -> None:
    """With an identity projection: channels are [y sin/cos interleaved, x sin/cos interleaved]."""

    pos = PositionalEncodingFourier(hidden_dim=4, dim=8)
    with torch.no_grad():
        pos.token_projection.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        pos.token_projection.bias.zero_()
    H, W = 2, 4
    enc = pos(1, H, W)[0]
    dim_t = torch.tensor([1.0, 1.0, 100.0, 100.0])  # 10000 ** (2 * (i // 2) / 4)
    x_pos = (torch.arange(1, W + 1) / (W + 1e-6) * 2 * math.pi)[:, None] / dim_t
    y_pos = (torch.arange(1, H + 1) / (H + 1e-6) * 2 * math.pi)[:, None] / dim_t
    torch.testing.assert_close(enc[4, 0], x_pos[:, 0].sin())
    torch.testing.assert_close(enc[5, 1], x_pos[:, 1].cos())
    torch.testing.assert_close(enc[6, 0], x_pos[:, 2].sin())
    torch.testing.assert_close(enc[0, :, 0], y_pos[:, 0].sin())
    torch.testing.assert_close(enc[3, :, 2], y_pos[:, 3].cos())
