"""Tests of nst_det/classification/config.py: every key documented, unknown keys refused, _BASE_."""
import glob
import os
import re

import pytest

import nst_det  # noqa: F401
from nst_det.classification import config as cls_config
from nst_det.classification.config import get_cls_config, load_cls_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_key_has_a_comment_above_it():
    lines = open(cls_config.__file__, encoding="utf-8").read().splitlines()
    undocumented = [
        line.strip() for i, line in enumerate(lines)
        if re.match(r"\s*_C\.[A-Z0-9_.]+ = ", line) and "CN()" not in line
        and not lines[i - 1].strip().startswith("#")
    ]
    assert undocumented == []


def test_defaults_follow_the_official_schedule():
    cfg = get_cls_config()
    assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.BASE_LR, cfg.SOLVER.NESTEROV) == (512, 0.1, True)
    assert (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.EPOCHS) == (1e-4, 100)
    assert tuple(cfg.SOLVER.STEPS) == (30, 60, 90)
    assert cfg.DISTILL.WARMUP_ITERS == 0  # warm-up off by default


def test_unknown_key_in_yaml_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("DISTILL:\n  NST:\n    WIEGHT: 50.0\n")
    with pytest.raises(KeyError, match="DISTILL.NST.WIEGHT"):
        load_cls_config(str(path))


def test_unknown_key_on_command_line_names_it():
    with pytest.raises(KeyError, match="SOLVER.BASE_LRR"):
        load_cls_config("", ["SOLVER.BASE_LRR", "0.1"])


def test_overrides_must_be_pairs():
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_cls_config("", ["SOLVER.BASE_LR"])


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_cls_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/imagenet/*.yaml"))
                                  + glob.glob(os.path.join(ROOT, "configs/demo/cls_*.yaml"))))
def test_shipped_configs_load(path):
    cfg = load_cls_config(path)
    assert cfg.MODEL.STUDENT.NAME


def test_imagenet_configs_inherit_the_official_setting():
    cfg = load_cls_config(os.path.join(ROOT, "configs/imagenet/nst_poly_kd.yaml"))
    assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.BASE_LR, cfg.SOLVER.EPOCHS) == (512, 0.1, 100)
    assert tuple(cfg.SOLVER.STEPS) == (30, 60, 90) and cfg.SOLVER.NESTEROV
    assert (cfg.DISTILL.NST.WEIGHT, cfg.DISTILL.NST.KERNEL) == (50.0, "poly")  # from nst_poly.yaml
    assert (cfg.DISTILL.KD.WEIGHT, cfg.DISTILL.KD.TEMPERATURE) == (1.0, 4.0)
    assert (cfg.MODEL.STUDENT.NAME, cfg.MODEL.TEACHER.NAME) == ("inception_bn", "resnet101")
    r50 = load_cls_config(os.path.join(ROOT, "configs/imagenet/nst_poly_kd_resnet50.yaml"))
    assert r50.MODEL.STUDENT.NAME == "resnet50" and r50.DISTILL.NST.WEIGHT == 50.0
