"""fold_frozen_norms: a frozen network's norms folded into the convolutions before them computes
what it did (float32 rounding), for Detectron2's Conv2d holding a FrozenBatchNorm2d and for
torch.fx-traceable networks (torchvision's ResNet); a pair is left as it is where folding would
change a read output (a tap), where the convolution's output goes elsewhere too, and a module
that still trains is refused."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from nst_det.engine.frozen import fold_frozen_norms, freeze  # first: makes Detectron2 importable
from detectron2.layers import Conv2d, FrozenBatchNorm2d  # noqa: E402


def randomise_statistics(module, seed=0):
    """Every norm's statistics and affine terms far from the identity, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            for name in ("running_mean", "bias"):
                getattr(m, name).data.uniform_(-1, 1, generator=generator)
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.running_var.data.uniform_(0.25, 4, generator=generator)
    return module


def same_up_to_rounding(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item())


def test_detectron2_conv_with_frozen_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(Conv2d(3, 8, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(8),
                               activation=nn.ReLU()),
                        Conv2d(8, 4, 1, bias=True, norm=FrozenBatchNorm2d(4)))
    freeze(randomise_statistics(net))
    reference = copy.deepcopy(net)
    assert fold_frozen_norms(net, trace=False) == 2
    assert all(m.norm is None for m in net) and all(not p.requires_grad for p in net.parameters())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        same_up_to_rounding(reference(x), net(x))


def test_torchvision_resnet_is_folded_through_torch_fx():
    torch.manual_seed(0)
    net = freeze(randomise_statistics(torchvision.models.resnet18(num_classes=5)))
    reference = copy.deepcopy(net)
    assert fold_frozen_norms(net) == 20  # stem, 16 block convolutions, 3 downsamples
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert isinstance(net.layer1[0].bn1, nn.Identity) and net.layer1[0].conv1.bias is not None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        same_up_to_rounding(reference(x), net(x))


def test_a_fold_that_changes_the_result_is_caught():
    """The broken variant the comparisons catch: the shift of each norm left out."""
    net = freeze(randomise_statistics(torchvision.models.resnet18(num_classes=5)))
    reference = copy.deepcopy(net)
    fold_frozen_norms(net)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.zero_()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pytest.raises(AssertionError):
        same_up_to_rounding(reference(x), net(x))


def test_tapped_outputs_are_kept():
    net = freeze(randomise_statistics(torchvision.models.resnet18(num_classes=5)))
    # the tapped convolution itself: its output would become its norm's
    assert fold_frozen_norms(copy.deepcopy(net), keep=["layer1.0.conv1"]) == 19
    # a module holding both the convolution and its norm: its output is unchanged
    assert fold_frozen_norms(copy.deepcopy(net), keep=["layer4", "layer1.0.bn1"]) == 20


class _ConvOutputUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.tail = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.tail(y)


def test_a_convolution_read_elsewhere_is_not_folded():
    net = freeze(randomise_statistics(_ConvOutputUsedTwice()))
    reference = copy.deepcopy(net)
    assert fold_frozen_norms(net) == 1  # the tail's pair only
    assert isinstance(net.bn, nn.BatchNorm2d) and isinstance(net.tail[1], nn.Identity)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        same_up_to_rounding(reference(x), net(x))


def test_a_module_that_trains_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fold_frozen_norms(torchvision.models.resnet18())
