"""Tests of nst_det/convert.py and tools/convert_cls_to_d2.py: classifier weights ->
Detectron2 backbone weights that load by exact names and give the classifier's features."""
import os
import runpy

import pytest
import torch
from torch import nn

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from nst_det.convert import (
    RESNET_BLOCKS,
    convert_checkpoint,
    convert_classifier_to_d2,
    d2_config_hints,
    detect_arch,
    resnet_to_d2,
)
from nst_det.classification.models import build_classifier
from nst_det.detection.backbone import add_inception_bn_config

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "convert_cls_to_d2.py")


class _RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the incompatible keys it would log."""

    def _log_incompatible_keys(self, incompatible):
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


def _randomize_bn(model):
    """Non-trivial BN statistics and affine parameters, so that a mis-mapped BN key shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _cfg(hints, **overrides):
    cfg = get_cfg()
    add_inception_bn_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([item for pair in {**hints, **overrides}.items() for item in pair])
    return cfg


def _load(model, path):
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path)
    return checkpointer.incompatible


@pytest.mark.parametrize("fpn,suffix", [(False, ".pkl"), (True, ".pth")])
def test_resnet18_round_trip_gives_the_same_features(tmp_path, fpn, suffix):
    torch.manual_seed(0)
    classifier = _randomize_bn(build_classifier("resnet18", 10)).eval()
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    out = str(tmp_path / f"r18{suffix}")
    assert convert_checkpoint(str(tmp_path / "resnet18.pth"), out, fpn=fpn) == "resnet18"

    hints = d2_config_hints("resnet18", fpn=fpn)
    cfg = _cfg(hints, **{"MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
                         "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
                         "MODEL.BACKBONE.FREEZE_AT": 0})
    holder = nn.Module()
    holder.backbone = build_backbone(cfg)
    incompatible = _load(holder, out)
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    trunk_prefix = "backbone.bottom_up." if fpn else "backbone."
    assert [k for k in incompatible.missing_keys if k.startswith(trunk_prefix)] == []
    if not fpn:
        assert incompatible.missing_keys == []

    bottom_up = (holder.backbone.bottom_up if fpn else holder.backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = bottom_up(x)
        m = classifier
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for i, layer in enumerate([m.layer1, m.layer2, m.layer3, m.layer4]):
            h = layer(h)
            torch.testing.assert_close(features[f"res{i + 2}"], h, rtol=1e-4, atol=1e-5)


def test_inception_bn_student_checkpoint_loads_into_fpn_detector_with_same_features(tmp_path):
    torch.manual_seed(0)
    student = _randomize_bn(build_classifier("inception_bn", 10)).eval()
    # As saved by a distillation run: DDP -> student -> FeatureTaps wrappers, plus other entries.
    state = {f"module.student.model.{k}": v for k, v in student.state_dict().items()}
    torch.save({"model": state, "iteration": 7}, tmp_path / "student.pth")
    out = str(tmp_path / "inception_bn_fpn.pkl")
    assert convert_checkpoint(str(tmp_path / "student.pth"), out, fpn=True) == "inception_bn"

    cfg = _cfg(d2_config_hints("inception_bn", fpn=True), **{
        "MODEL.FPN.IN_FEATURES": ["stem", "inc3", "inc4", "inc5"],
        "MODEL.INCEPTION_BN.FREEZE_AT": 0,
        "MODEL.WEIGHTS": out,
        # The FPN Faster R-CNN of Detectron2's Base-RCNN-FPN.yaml.
        "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
        "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
        "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
        "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 64,  # small: only the backbone matters here
    })
    model = build_model(cfg)
    incompatible = _load(model, cfg.MODEL.WEIGHTS)
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []
    assert any(k.startswith("backbone.fpn_") for k in incompatible.missing_keys)  # FPN is new

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.backbone.bottom_up.eval()(x)
        expected = student.backbone.eval()(x)  # the classifier's trunk returns only "inc5"
    torch.testing.assert_close(features["inc5"], expected["inc5"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", list(RESNET_BLOCKS))
def test_every_resnet_maps_onto_detectron2_resnet_keys_and_shapes(arch):
    with torch.device("meta"):  # structure only: no memory, no compute
        tv = build_classifier(arch, 1000).state_dict()
        cfg = _cfg(d2_config_hints(arch), **{"MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
                                            "MODEL.BACKBONE.FREEZE_AT": 0})
        d2 = build_backbone(cfg).state_dict()
    assert detect_arch(tv) == arch
    converted = resnet_to_d2(tv)
    d2 = {k: v for k, v in d2.items() if not k.endswith("num_batches_tracked")}
    assert sorted(converted) == sorted(d2)
    assert all(converted[k].shape == d2[k].shape for k in d2)


def test_cli_writes_loadable_weights_and_prints_config(tmp_path, capsys):
    torch.save(build_classifier("resnet18", 3).state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "r18_fpn.pkl"
    runpy.run_path(TOOL, run_name="nst_det_cli_test")["main"]([str(tmp_path / "r18.pth"), str(out), "--fpn",
                                                               "--arch", "resnet18"])
    printed = capsys.readouterr().out
    assert "MODEL.RESNETS.STRIDE_IN_1X1 False" in printed and "MODEL.RESNETS.DEPTH 18" in printed
    import pickle

    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "nst_det" and data["matching_heuristics"] is False
    assert "backbone.bottom_up.res5.1.conv2.norm.running_var" in data["model"]
    assert not any(k.startswith("backbone.bottom_up.fc") for k in data["model"])


def test_errors_name_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        convert_checkpoint(str(tmp_path / "absent.pth"), str(tmp_path / "out.pkl"))
    torch.save(build_classifier("demo_student", 3).state_dict(), tmp_path / "demo.pth")
    with pytest.raises(ValueError, match="cannot tell the architecture"):
        convert_checkpoint(str(tmp_path / "demo.pth"), str(tmp_path / "out.pkl"))
    resnet18 = build_classifier("resnet18", 3).state_dict()
    with pytest.raises(ValueError, match="'resnet50' was asked for but the weights are those of resnet18"):
        convert_classifier_to_d2(resnet18, arch="resnet50")
    with pytest.raises(ValueError, match="out.npz"):
        convert_checkpoint(str(tmp_path / "demo.pth"), str(tmp_path / "out.npz"))
    with pytest.raises(ValueError, match="not part of a torchvision ResNet: \\['extra.weight'\\]"):
        resnet_to_d2({**resnet18, "extra.weight": torch.zeros(1)})
