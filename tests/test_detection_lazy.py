"""nst_det.detection.lazy in-process: a LazyConfig student wrapped by distill_model instantiates to
the matching distilling class with the settings of the config's ``distill`` section, mapped by
the one mapping that the yaml configs use; L(DistillGeneralizedRCNN)(...) instantiates too; the
student alone is recovered for evaluation; bad settings are refused naming their key."""
import os

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.model_zoo import get_config
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from nst_det.detection.config import distill_arguments, distill_settings
from nst_det.detection.lazy import (
    build_teacher_from_files,
    check_lazy_distill,
    distill_model,
    student_node,
)
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.meta_arch import DistillGeneralizedRCNN, DistillRetinaNet

from distill_testing import save_random_teacher, write_teacher_config

SETTINGS = dict(STUDENT_FEATURES=["p3", "p4"], TEACHER_FEATURES=["p3", "p4"],
                LEVEL_WEIGHTS=[1.0, 0.5], WARMUP_ITERS=7,
                NST=dict(WEIGHT=2.5, KERNEL="gaussian", SIGMA2=0.0), KD=dict(WEIGHT=0.0))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy_teacher")
    config = write_teacher_config(folder)
    return dict(config=config, weights=save_random_teacher(config, str(folder / "t.pth")))


def student():
    model = get_config("common/models/mask_rcnn_fpn.py").model
    model.roi_heads.mask_in_features = None
    model.roi_heads.mask_pooler = None
    model.roi_heads.mask_head = None
    return model


def lazy_cfg(teacher, settings=SETTINGS):
    cfg = LazyConfig.load(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "lazy",
                                       "voc_frcnn_R50_nst.py"))
    cfg.model = distill_model(student(), teacher=L(build_teacher_from_files)(
        config=teacher["config"], weights=teacher["weights"]))
    cfg.distill = settings
    return cfg


def test_distill_model_instantiates_the_matching_class_with_the_distill_section(teacher):
    cfg = LazyConfig.apply_overrides(lazy_cfg(teacher), ["model.roi_heads.num_classes=7",
                                                         "distill.NST.WEIGHT=3.0"])
    model = instantiate(cfg.model)
    assert type(model) is DistillGeneralizedRCNN
    assert model.roi_heads.box_predictor.num_classes == 7  # the student's arguments kept their place
    assert model.nst_weight == 3.0 and model.level_weights == [1.0, 0.5]
    assert model.nst_kwargs == dict(kernel="gaussian", degree=2, coef=0.0, sigma2=None)
    assert model.warmup_iters == 7 and model.student_features == ["p3", "p4"]
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith("teacher") for k in model.state_dict())
    plain = instantiate(student_node(cfg.model))
    assert type(plain) is GeneralizedRCNN
    assert set(plain.state_dict()) == set(model.state_dict())


def test_the_lazy_and_the_yaml_settings_map_alike(teacher):
    yaml_cfg = load_nst_cfg(teacher["config"], [
        "DISTILL.STUDENT_FEATURES", ["p3", "p4"], "DISTILL.TEACHER_FEATURES", ["p3", "p4"],
        "DISTILL.LEVEL_WEIGHTS", [1.0, 0.5], "DISTILL.WARMUP_ITERS", 7,
        "DISTILL.NST.WEIGHT", 2.5, "DISTILL.NST.KERNEL", "gaussian"])
    assert distill_arguments(distill_settings(SETTINGS)) == distill_arguments(yaml_cfg.DISTILL)


def test_lazycall_of_a_distill_class_with_explicit_arguments(teacher):
    node = L(DistillRetinaNet)(**{k: v for k, v in
                                  get_config("common/models/retinanet.py").model.items()
                                  if k != "_target_"})
    node.teacher = L(build_teacher_from_files)(config=teacher["config"],
                                               weights=teacher["weights"])
    node.update(student_features=["p3"], teacher_features=["p3"], level_weights=[],
                nst_weight=1.0)
    model = instantiate(node)
    assert type(model) is DistillRetinaNet and model.student_features == ["p3"]
    assert type(instantiate(student_node(node))) is RetinaNet


def test_every_weight_zero_builds_no_teacher(teacher):
    model = instantiate(lazy_cfg(teacher, dict(NST=dict(WEIGHT=0.0))).model)
    assert model.teacher is None


@pytest.mark.parametrize("settings, error, message", [
    (dict(NST=dict(WEIGHT=-1.0)), ValueError, "distill.NST.WEIGHT is -1.0"),
    (dict(NST=dict(KERNEL="cubic")), ValueError, "distill.NST"),
    (dict(NST=dict(WIEGHT=1.0)), KeyError, "distill.NST.WIEGHT is no distillation setting"),
    (dict(KD=dict(TEMPERATURE=0.0)), ValueError, "distill.KD.TEMPERATURE is 0.0"),
    (dict(STUDENT_FEATURES=["p2"], LEVEL_WEIGHTS=[1.0, 1.0]), ValueError,
     "distill.LEVEL_WEIGHTS"),
    (dict(TEACHER=dict(WEIGHTS="t.pth")), KeyError, "distill.TEACHER"),
    (dict(NST=4.0), ValueError, "distill.NST is 4.0"),
])
def test_bad_settings_are_refused_naming_the_key(teacher, settings, error, message):
    cfg = lazy_cfg(teacher, settings)
    with pytest.raises(error, match=message.replace("[", r"\[").replace(".", r"\.")):
        check_lazy_distill(cfg)
    with pytest.raises(error, match=r"distill\."):
        instantiate(cfg.model)


def test_a_setting_the_model_refuses_is_named_as_the_config_names_it(teacher):
    cfg = lazy_cfg(teacher, dict(NST=dict(WEIGHT=1.0), RESIZE="sideways"))
    check_lazy_distill(cfg)  # a value only the model knows to refuse
    with pytest.raises(ValueError, match=r"distill\.RESIZE is 'sideways'"):
        instantiate(cfg.model)


def test_a_missing_distill_section_is_named(teacher):
    cfg = lazy_cfg(teacher)
    del cfg["distill"]
    with pytest.raises(KeyError, match="no `distill` section"):
        check_lazy_distill(cfg)


def test_an_unknown_student_is_refused_when_the_config_is_written():
    with pytest.raises(ValueError, match="no distilling class for a Linear student"):
        distill_model(L(torch.nn.Linear)(in_features=1, out_features=1), teacher=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_train_device_cuda_without_a_gpu_says_how_to_run_on_the_cpu():
    from nst_det.detection.lazy_trainer import check_train_device

    with pytest.raises(ValueError, match=r"pass train\.device=cpu .*lazyconfig_train_net\.py"):
        check_train_device("cuda")
