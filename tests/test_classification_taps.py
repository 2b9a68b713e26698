"""Tests of nst_det/classification/taps.py: logits plus feature maps of named layers."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.models import build_classifier
from nst_det.classification.taps import FeatureTaps, default_tap, tappable_layers


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_classifier("resnet18", 10).eval()


def test_resnet_layer4_tap_equals_the_trunk_and_logits_are_unchanged(resnet18):
    m = resnet18
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = FeatureTaps(m, ["layer4", "layer2"])(x)
        trunk = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        layer2 = m.layer2(m.layer1(trunk))
        layer4 = m.layer4(m.layer3(layer2))
        torch.testing.assert_close(logits, m(x))
    assert list(feats) == ["layer4", "layer2"]
    torch.testing.assert_close(feats["layer4"], layer4)
    torch.testing.assert_close(feats["layer2"], layer2)
    assert not m._forward_hooks and not m.layer4._forward_hooks, "hooks must be removed after the forward"


def test_inception_bn_default_tap_is_pre_relu_5b_that_feeds_the_classifier():
    torch.manual_seed(0)
    model = build_classifier("inception_bn", 6).eval()
    with torch.no_grad():
        logits, feats = FeatureTaps(model, [default_tap("inception_bn")])(torch.randn(2, 3, 64, 64))
    tap = feats["backbone.inc5.in5b.concat_bn"]
    assert tuple(tap.shape) == (2, 1024, 2, 2)
    assert (tap < 0).any()
    torch.testing.assert_close(model.fc(F.relu(tap).mean(dim=(2, 3))), logits)


def test_tap_before_an_inplace_relu_keeps_its_negative_values(resnet18):
    # torchvision's bn1 is followed by ReLU(inplace=True): an uncopied tap would be clipped at 0.
    with torch.no_grad():
        _, feats = FeatureTaps(resnet18, ["layer1.0.bn1"])(torch.randn(2, 3, 64, 64))
    assert (feats["layer1.0.bn1"] < 0).any()


def test_gradients_flow_through_tapped_features():
    torch.manual_seed(0)
    model = build_classifier("demo_student", 10)
    _, feats = FeatureTaps(model, ["block3"])(torch.randn(4, 3, 32, 32))
    feats["block3"].pow(2).mean().backward()
    assert model.block1.conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None


def test_wrong_layer_name_lists_close_names(resnet18):
    with pytest.raises(ValueError, match=r"no layer 'layer5'.*'layer4'"):
        FeatureTaps(resnet18, ["layer5"])
    assert "layer3.1.conv2" in tappable_layers(resnet18)


def test_module_run_twice_per_forward_is_refused(resnet18):
    with pytest.raises(ValueError, match="layer1.0.relu.*more than once"):
        FeatureTaps(resnet18, ["layer1.0.relu"])(torch.randn(1, 3, 32, 32))


def test_default_tap_of_unknown_name_lists_names():
    with pytest.raises(KeyError, match="demo_student"):
        default_tap("vgg7")


def test_works_under_distributed_data_parallel_both_ways(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 3, 32, 32)
        outer = DistributedDataParallel(FeatureTaps(build_classifier("demo_student", 10), ["block3"]))
        inner = FeatureTaps(DistributedDataParallel(build_classifier("demo_student", 10)), ["block3"])
        for wrapped in (outer, inner):
            logits, feats = wrapped(x)
            (logits.logsumexp(1).mean() + feats["block3"].pow(2).mean()).backward()
            params = wrapped.module.model if wrapped is outer else wrapped.model.module
            assert tuple(feats["block3"].shape) == (4, 32, 8, 8)
            assert all(p.grad is not None for p in params.parameters())
    finally:
        dist.destroy_process_group()
