"""ReparamLargeKernelConv: large + small kernel branches fold into one conv (FastViT's patch embedding)."""

import pytest
import torch
from torch import nn

from birder_exp.layers.reparam_large_kernel import ReparamLargeKernelConv


@pytest.mark.parametrize(("small_kernel", "use_se"), [(3, False), (None, True)])
def test_reparameterize_keeps_the_function(small_kernel: int | None, use_se: bool) -> None:
    torch.manual_seed(0)
    layer = ReparamLargeKernelConv(8, 8, 7, 2, 8, small_kernel=small_kernel, use_se=use_se, reparameterized=False)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    layer.eval()
    assert (layer.small_conv is not None) is (small_kernel is not None)
    x = torch.randn(2, 8, 15, 17)
    with torch.inference_mode():
        expected = layer(x)
    layer.reparameterize()
    assert all(k.startswith(("lkb_reparam.", "se.")) for k in layer.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)

    built = ReparamLargeKernelConv(8, 8, 7, 2, 8, small_kernel=small_kernel, use_se=use_se, reparameterized=True)
    assert sorted(built.state_dict()) == sorted(layer.state_dict())  # Folding appends lkb_reparam last


def test_bad_kernels() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        ReparamLargeKernelConv(4, 4, 4, 1, 4, small_kernel=3, use_se=False, reparameterized=False)
    with pytest.raises(ValueError, match="small_kernel must be odd and at most kernel_size"):
        ReparamLargeKernelConv(4, 4, 5, 1, 4, small_kernel=7, use_se=False, reparameterized=False)
