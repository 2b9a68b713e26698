"""Tests of nst_det/classification/config.py: every key documented, unknown keys refused, _BASE_."""
import glob
import os
import re

import pytest

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.config import get_cls_config, load_cls_config
from nst_det.engine.distill_config import check_distill_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert (cfg.MODEL.STUDENT.NAME, cfg.DISTILL.TEACHER.NAME) == ("inception_bn", "resnet101")
    r50 = load_cls_config(os.path.join(ROOT, "configs/imagenet/nst_poly_kd_resnet50.yaml"))
    assert r50.MODEL.STUDENT.NAME == "resnet50" and r50.DISTILL.NST.WEIGHT == 50.0


def test_augmentation_is_off_by_default_and_in_the_demos_official_on_imagenet():
    def augmentation(cfg):
        return cfg.DATA.COLOR_JITTER, cfg.DATA.LIGHTING_STD

    assert augmentation(get_cls_config()) == (0.0, 0.0)
    for path in glob.glob(os.path.join(ROOT, "configs/imagenet/*.yaml")):  # fb.resnet.torch's
        assert augmentation(load_cls_config(path)) == (0.4, 0.1), path
    for path in glob.glob(os.path.join(ROOT, "configs/demo/cls_*.yaml")):
        assert augmentation(load_cls_config(path)) == (0.0, 0.0), path


def test_device_is_cuda_by_default_and_cpu_in_the_demo_configs():
    assert get_cls_config().MODEL.DEVICE == "cuda"  # like Detectron2; never a silent fall-back
    assert load_cls_config(os.path.join(ROOT, "configs/imagenet/nst_poly_kd.yaml")).MODEL.DEVICE \
        == "cuda"
    for path in glob.glob(os.path.join(ROOT, "configs/demo/cls_*.yaml")):
        assert load_cls_config(path).MODEL.DEVICE == "cpu", path


def _yaml_with_base(folder, text, base="configs/imagenet/nst_poly_kd.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(f'_BASE_: "{os.path.join(ROOT, base)}"\n' + text)
    return str(path)


def test_relative_paths_are_read_next_to_the_yaml(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    config = _yaml_with_base(runs, 'DISTILL:\n  TEACHER:\n    WEIGHTS: "teacher.pth"\n'
                                   'DATA:\n  ROOT: "imagenet"\n')
    (runs / "teacher.pth").write_bytes(b"")
    (runs / "imagenet").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_cls_config(config)
    assert cfg.DISTILL.TEACHER.WEIGHTS == str(runs / "teacher.pth")
    assert cfg.DATA.ROOT == str(runs / "imagenet")
    # On the command line, a relative path is read from the current directory.
    (elsewhere / "other.pth").write_bytes(b"")
    cfg = load_cls_config(config, ["DISTILL.TEACHER.WEIGHTS", "other.pth"])
    assert cfg.DISTILL.TEACHER.WEIGHTS == str(elsewhere / "other.pth")


@pytest.mark.parametrize("key", ["DISTILL.NST.WEIGHT", "DISTILL.KD.WEIGHT", "DISTILL.AT.WEIGHT",
                                 "DISTILL.FITNET.WEIGHT"])
@pytest.mark.parametrize("value", ["-1.0", "1e999"])
def test_negative_or_non_finite_weight_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"{key} is (-1.0|inf): a distillation weight must be a "
                                         rf"finite number >= 0 \(0 turns the term off\)"):
        load_cls_config("", [key, value])


def test_nan_weight_in_a_yaml_names_the_key(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("DISTILL:\n  KD:\n    WEIGHT: .nan\n")
    with pytest.raises(ValueError, match="DISTILL.KD.WEIGHT is nan"):
        load_cls_config(str(path))


@pytest.mark.parametrize("key, value, message", [
    ("DISTILL.NST.SIGMA2", "-2.0", "DISTILL.NST.SIGMA2 is -2.0: the Gaussian bandwidth must be"),
    ("DISTILL.KD.TEMPERATURE", "-4.0", "DISTILL.KD.TEMPERATURE is -4.0: the KD temperature must"),
    ("DISTILL.KD.TEMPERATURE", "0.0", "DISTILL.KD.TEMPERATURE is 0.0"),
    ("DISTILL.WARMUP_ITERS", "-5", "DISTILL.WARMUP_ITERS is -5: it must be >= 0"),
])
def test_other_distillation_settings_out_of_range_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_cls_config("", [key, value])


def test_zero_weights_and_data_driven_sigma2_are_valid():
    cfg = load_cls_config("", ["DISTILL.NST.WEIGHT", "0.0", "DISTILL.NST.SIGMA2", "0.0",
                               "DISTILL.NST.KERNEL", "gaussian"])
    assert cfg.DISTILL.NST.WEIGHT == 0.0 and cfg.DISTILL.NST.SIGMA2 == 0.0


def test_a_weight_that_is_not_a_number_names_the_key():
    cfg = get_cls_config()
    cfg.DISTILL.NST.WEIGHT = "50"  # set in code: yacs checks the types of yaml and command line
    with pytest.raises(ValueError, match="DISTILL.NST.WEIGHT is '50': a distillation weight must "
                                         "be a finite number"):
        check_distill_config(cfg)
