"""Tests of nst_det/detection/config.py and of the detection configs in configs/."""
import glob
import os
import re

import pytest

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.config import get_cfg
from nst_det.detection import config as nst_config
from nst_det.detection.config import add_nst_config
from nst_det.detection.load_config import (
    DISTILL_META_ARCHITECTURES,
    MODEL_ZOO_PREFIX,
    get_nst_cfg,
    is_lazy_config,
    load_nst_cfg,
    load_teacher_cfg,
    model_zoo_config_file,
    num_classes_key,
    student_cfg,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTION_CONFIGS = sorted(
    glob.glob(os.path.join(REPO, "configs", "*.yaml"))
    + glob.glob(os.path.join(REPO, "configs", "demo", "det_*.yaml"))
)


def test_defaults_of_every_distill_key():
    d = get_nst_cfg().DISTILL
    assert d.TEACHER.CONFIG == "" and d.TEACHER.WEIGHTS == ""
    assert d.STUDENT_FEATURES == [] and d.TEACHER_FEATURES == [] and d.LEVEL_WEIGHTS == []
    assert d.NST.WEIGHT == 0.0 and d.WARMUP_ITERS == 0
    assert (d.NST.KERNEL, d.NST.DEGREE, d.NST.COEF, d.NST.SIGMA2) == ("poly", 2, 0.0, 0.0)
    assert (d.KD.WEIGHT, d.KD.TEMPERATURE) == (0.0, 4.0)


def test_inception_bn_keys_are_added():
    cfg = add_nst_config(get_cfg())
    assert "INCEPTION_BN" in cfg.MODEL and "OUT_FEATURES" in cfg.MODEL.INCEPTION_BN


def test_unknown_key_in_a_yaml_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("DISTILL:\n  NST:\n    WIEGHT: 1.0\n")
    cfg = get_nst_cfg()
    with pytest.raises(KeyError, match="WIEGHT"):
        cfg.merge_from_file(str(path))


def test_load_teacher_cfg_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="DISTILL.TEACHER.CONFIG is empty"):
        load_teacher_cfg("")
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml.*DISTILL\.TEACHER\.CONFIG"):
        load_teacher_cfg(missing)


def test_load_teacher_cfg_merges_the_file_and_freezes(tmp_path):
    path = tmp_path / "teacher.yaml"
    path.write_text("MODEL:\n  RESNETS:\n    DEPTH: 101\n  PIXEL_STD: [1.0, 1.0, 1.0]\n")
    cfg = load_teacher_cfg(str(path))
    assert cfg.MODEL.RESNETS.DEPTH == 101 and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert cfg.is_frozen()


def test_student_cfg_builds_the_plain_student():
    cfg = get_nst_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DistillGeneralizedRCNN"
    plain = student_cfg(cfg)
    assert plain.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.META_ARCHITECTURE == "DistillGeneralizedRCNN"  # the original is untouched


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_detection_config_merges_and_its_teacher_config_exists(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any directory: the teacher's config is next to the yaml
    cfg = load_nst_cfg(path)
    if cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES:
        teacher_config = cfg.DISTILL.TEACHER.CONFIG
        if is_lazy_config(teacher_config):
            assert os.path.isfile(model_zoo_config_file(teacher_config, "DISTILL.TEACHER.CONFIG"))
        else:
            teacher = load_teacher_cfg(teacher_config)
            assert teacher.MODEL.META_ARCHITECTURE not in DISTILL_META_ARCHITECTURES
            same_family = (teacher.MODEL.META_ARCHITECTURE
                           == cfg.MODEL.META_ARCHITECTURE.replace("Distill", ""))
            if same_family and not teacher_config.startswith(MODEL_ZOO_PREFIX):
                # a teacher of the student's family trained on the student's data: same classes
                key = num_classes_key(cfg).split(".")[1]
                assert teacher.MODEL[key].NUM_CLASSES == cfg.MODEL[key].NUM_CLASSES
        assert cfg.DISTILL.TEACHER.WEIGHTS
        d = cfg.DISTILL
        assert d.NST.WEIGHT > 0 and len(d.STUDENT_FEATURES) == len(d.TEACHER_FEATURES)
        assert d.LEVEL_WEIGHTS == []  # 1.0 for each pair


def test_the_config_set_is_complete():
    names = {os.path.relpath(p, os.path.join(REPO, "configs")) for p in DETECTION_CONFIGS}
    for dataset in ("voc", "coco"):
        for kind in ("R101_teacher", "R18_baseline", "nst_pretrained", "nst", "nst_pretrained_nst"):
            assert f"{dataset}_frcnn_{kind}.yaml" in names
        for kind in ("retinanet_R101_teacher", "retinanet_R18_baseline", "retinanet_R18_nst",
                     "retinanet_R18_from_frcnn_nst", "frcnn_R18_nst_zoo_teacher",
                     "frcnn_R18_narrow_fpn_nst"):
            assert f"{dataset}_{kind}.yaml" in names
    assert {"coco_fcos_R18_nst.yaml", "coco_frcnn_R18_nst_lazy_teacher.yaml"} <= names
    assert {"demo/det_teacher.yaml", "demo/det_student.yaml", "demo/det_student_nst.yaml"} <= names
