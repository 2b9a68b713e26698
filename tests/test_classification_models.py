"""Tests of nst_det/classification/models.py: classifiers by name and loading their weights."""
import pytest
import torch
import torchvision

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.models import (available_classifiers, build_classifier,
                                           load_classifier_state_dict)
from nst_det.classification.taps import FeatureTaps, default_tap
from nst_det.engine.checkpointer import WeightsMismatchError, load_weights_strictly


@pytest.mark.parametrize("name", available_classifiers())
def test_every_name_builds_with_num_classes_outputs_and_its_default_tap(name):
    with torch.device("meta"):  # no memory, no compute: structure only
        model = build_classifier(name, num_classes=7)
    modules = dict(model.named_modules())
    assert default_tap(name) in modules
    last_linear = [m for m in modules.values() if isinstance(m, torch.nn.Linear)][-1]
    assert last_linear.out_features == 7


@pytest.mark.parametrize("name,size", [("inception_bn", 64), ("resnet18", 64), ("demo_student", 32)])
def test_forward_gives_logits_per_image(name, size):
    torch.manual_seed(0)
    model = build_classifier(name, num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, size, size))
    assert tuple(logits.shape) == (3, 5)
    assert torch.isfinite(logits).all()


def test_demo_teacher_is_bigger_and_last_maps_share_spatial_size():
    torch.manual_seed(0)
    teacher, student = build_classifier("demo_teacher", 10), build_classifier("demo_student", 10)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    assert n_teacher > 10 * n_student
    x = torch.randn(2, 3, 32, 32)
    _, ft = FeatureTaps(teacher, [default_tap("demo_teacher")])(x)
    _, fs = FeatureTaps(student, [default_tap("demo_student")])(x)
    assert ft["block3"].shape[-2:] == fs["block3"].shape[-2:] == (8, 8)
    gray = build_classifier("demo_student", 10, in_channels=1)
    assert tuple(gray(torch.randn(2, 1, 32, 32)).shape) == (2, 10)


def test_unknown_name_lists_available_names():
    with pytest.raises(KeyError, match=r"unknown classifier 'resnet19'; available: .*resnet18.*"
                                       r"inception_bn, demo_teacher, demo_student, "
                                       r"demo_student_wide"):
        build_classifier("resnet19", 10)


def test_torchvision_names_come_from_torchvision_and_take_three_channels():
    names = available_classifiers()
    # torchvision's own names (list_models) of the families with a default tap, nst_det's after them
    assert names[-4:] == ["inception_bn", "demo_teacher", "demo_student", "demo_student_wide"]
    assert set(names[:-4]) <= set(torchvision.models.list_models(module=torchvision.models))
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                 "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "mobilenet_v2",
                 "mobilenet_v3_large", "efficientnet_b0", "densenet121"):
        assert name in names
    with pytest.raises(ValueError, match="torchvision model 'resnet18' takes 3-channel images, "
                                         "not 1"):
        build_classifier("resnet18", 10, in_channels=1)


def _loaded(name, num_classes, path):
    model = build_classifier(name, num_classes)
    load_weights_strictly(model, str(path), "MODEL.STUDENT.WEIGHTS", what="student weights file",
                          loaded_into=f"the student {name}")
    return model.eval()


def test_weights_round_trip_from_torchvision_state_dict_and_nst_det_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = build_classifier("demo_student", 4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = source(x)
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    # a checkpoint of tools/train_cls.py: the classifier under "model", beside the rest
    torch.save({"model": source.state_dict(), "heads": {}, "iteration": 3}, tmp_path / "ckpt.pth")
    # the same weights saved from a DDP-wrapped classifier
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "ddp.pth")
    for path in ("plain.pth", "ckpt.pth", "ddp.pth"):
        torch.testing.assert_close(_loaded("demo_student", 4, tmp_path / path)(x), expected)


def test_wrapper_prefixes_shared_by_all_keys_are_stripped_outermost_first(tmp_path):
    weights = build_classifier("demo_student", 4).state_dict()
    # DDP around the distillation student (FeatureTaps in "student.model"), beside other keys
    wrapped = {f"module.student.model.{k}": v for k, v in weights.items()}
    wrapped["module.heads.fitnet.weight"] = torch.zeros(1)
    torch.save({"model": wrapped, "iteration": 3}, tmp_path / "wrapped.pth")
    state = load_classifier_state_dict(str(tmp_path / "wrapped.pth"))
    assert list(state) == list(weights)
    # a prefix that only some keys have is kept
    torch.save({"module.fc.weight": torch.zeros(1), "fc.bias": torch.zeros(1)},
               tmp_path / "mixed.pth")
    assert list(load_classifier_state_dict(str(tmp_path / "mixed.pth"))) == ["module.fc.weight",
                                                                           "fc.bias"]


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"student weights file '.*nope.pth' "
                                                r"\(MODEL.STUDENT.WEIGHTS\) does not exist"):
        _loaded("resnet18", 10, path)


def test_wrong_keys_are_named_with_counts(tmp_path):
    torch.save(build_classifier("demo_student", 10).state_dict(), tmp_path / "student.pth")
    with pytest.raises(WeightsMismatchError, match=r"does not match the student demo_teacher: "
                                                   r"missing keys \d+: .*wrongly shaped keys") as err:
        _loaded("demo_teacher", 10, tmp_path / "student.pth")
    assert "block1.conv2.weight" in str(err.value)
    with pytest.raises(WeightsMismatchError,
                       match=r"fc.weight \(file \(10, 32\), model \(3, 32\)\)"):
        _loaded("demo_student", 3, tmp_path / "student.pth")
