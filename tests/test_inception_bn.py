"""Tests of nst_det/detection/backbone/inception_bn.py: the Inception-BN trunk and its Detectron2 builders."""
import math

import pytest
import torch
import torch.nn.functional as F

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone

from nst_det.detection.backbone.inception_bn import add_inception_bn_config
from nst_det.inception_bn import InceptionBN

# The documented table: stage -> (channels, stride).
TABLE = {"stem": (192, 4), "inc3": (320, 8), "inc4": (608, 16), "inc5": (1024, 32)}


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return InceptionBN(out_features=list(TABLE)).eval()


def test_output_shape_matches_channel_stride_table(trunk):
    shapes = trunk.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == TABLE


def test_forward_sizes_are_input_over_stride(trunk):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = trunk(x)
    for name, (channels, stride) in TABLE.items():
        assert tuple(out[name].shape) == (2, channels, 64 // stride, 96 // stride), name


def test_224_input_gives_1024x7x7_like_the_paper():
    torch.manual_seed(0)
    model = InceptionBN(out_features=["inc5"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert list(out) == ["inc5"]
    assert tuple(out["inc5"].shape) == (1, 1024, 7, 7)


def test_in5b_tap_is_pre_relu_concat_of_branch_bn_outputs(trunk):
    captured = {}
    block = trunk.inc5.in5b
    hooks = [
        block.concat_bn.register_forward_hook(lambda m, i, o: captured.__setitem__("tap", o)),
        block.conv_1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("1x1", o)),
        block.conv_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("proj", o)),
    ]
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 64, 64))["inc5"]
    for h in hooks:
        h.remove()
    tap = captured["tap"]
    assert tap.shape[1] == 352 + 320 + 224 + 128 == 1024
    assert (tap < 0).any(), "the tap must be taken before the ReLU"
    torch.testing.assert_close(F.relu(tap), out)
    # Branch order of the official concat: 1x1 (352) | 3x3 (320) | double 3x3 (224) | proj (128).
    torch.testing.assert_close(tap[:, :352], captured["1x1"])
    torch.testing.assert_close(tap[:, -128:], captured["proj"])


def test_init_is_gaussian_with_variance_2_over_fan_in(trunk):
    w = trunk.inc5.in5a.conv_1x1.weight  # [352, 1056, 1, 1]: 371k samples
    expected_std = math.sqrt(2.0 / (w.shape[1] * w.shape[2] * w.shape[3]))
    assert abs(w.std().item() / expected_std - 1) < 0.01
    assert abs(w.mean().item()) < 0.01 * expected_std
    assert trunk.inc5.in5a.conv_1x1.bias is None


def _cfg(**overrides):
    cfg = get_cfg()
    add_inception_bn_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FPN.IN_FEATURES = ["stem", "inc3", "inc4", "inc5"]
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def test_fpn_builder_through_detectron2_config_gives_p2_to_p6():
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_inception_bn_fpn_backbone"})
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)
    }
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 256, 16, 16), "p3": (1, 256, 8, 8), "p4": (1, 256, 4, 4), "p5": (1, 256, 2, 2), "p6": (1, 256, 1, 1)
    }


def test_plain_builder_honours_norm_out_features_and_freeze_at():
    cfg = _cfg(**{
        "MODEL.BACKBONE.NAME": "build_inception_bn_backbone",
        "MODEL.INCEPTION_BN.OUT_FEATURES": ["inc4"],
        "MODEL.INCEPTION_BN.NORM": "BN",
        "MODEL.INCEPTION_BN.FREEZE_AT": 2,
    })
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == ["inc4"]
    assert not hasattr(backbone, "inc5"), "stages after the last output are not built"
    for name in ("stem", "inc3"):
        stage = getattr(backbone, name)
        assert not any(p.requires_grad for p in stage.parameters()), name
        assert isinstance(stage.conv1.norm if name == "stem" else stage.in3a.conv_1x1.norm, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in backbone.inc4.parameters())
    assert isinstance(backbone.inc4.in4a.conv_1x1.norm, torch.nn.BatchNorm2d)


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="inc6"):
        InceptionBN(out_features=["inc6"])
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_inception_bn_fpn_backbone",
                  "MODEL.INCEPTION_BN.OUT_FEATURES": ["inc4", "inc5"]})
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(cfg)
    bare = get_cfg()
    bare.MODEL.BACKBONE.NAME = "build_inception_bn_backbone"
    with pytest.raises(KeyError, match="add_inception_bn_config"):
        build_backbone(bare)


def test_wrong_input_shape_is_named(trunk):
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        trunk(torch.randn(2, 1, 32, 32))
