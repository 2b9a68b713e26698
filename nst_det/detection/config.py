"""Every config key nst_det adds to Detectron2's config, with its default (``DISTILL``: the keys of
:mod:`nst_det.engine.distill_config`, shared with the classification stage, and the teacher's
config file).

``tools/train_net.py`` calls :func:`add_nst_config` right after ``get_cfg()`` (through
:func:`nst_det.detection.load_config.load_nst_cfg`); yaml files in ``configs/`` inherit through
``_BASE_`` and list only what they change.
"""
from detectron2.config import CfgNode as CN

from nst_det.engine.distill_config import add_distill_config

from .backbone.inception_bn import add_inception_bn_config
from .data.custom import add_custom_datasets_config
from .fcos import add_fcos_config

__all__ = ["add_nst_config"]


def add_nst_config(cfg: CN) -> CN:
    """Add the distillation keys (``DISTILL``, shared with the classification stage, plus the
    detection-only ones), the keys of nst_det's backbones, of its config-registered data sets and
    of FCOS from yaml (``MODEL.FCOS``) to ``cfg``."""
    _C = cfg
    add_distill_config(_C)
    # Teacher detector's config file, relative to the yaml that names it: a Detectron2 yaml of a plain
    # detector (GeneralizedRCNN, RetinaNet, YamlFCOS), a LazyConfig .py (its `model`), or "zoo://" + a
    # config of Detectron2's model zoo (either kind). Required when a distillation weight is > 0.
    _C.DISTILL.TEACHER.CONFIG = ""
    # Matched levels of different strides: "" = an error naming both levels; "student_to_teacher" or
    # "teacher_to_student" = NST on the pair after a bilinear resize of one map to the other's size.
    _C.DISTILL.RESIZE = ""
    # Empty STUDENT_FEATURES: "name" = every backbone output both have, by name; "stride" = each
    # student backbone output with the teacher's output of the same stride (names may differ).
    _C.DISTILL.MATCH_LEVELS = "name"

    # Let MODEL.WEIGHTS leave most of the detector unloaded (a file of another architecture). By
    # default that is an error: training from it, or evaluating it, gives meaningless numbers.
    _C.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    # Test sets whose thing_classes are the training sets' in another order: "" = an error naming
    # both lists; "by_name" = evaluate with the model's classes mapped to the test set's by name.
    _C.DATASETS.TEST_CLASS_MAP = ""

    add_inception_bn_config(_C)
    add_custom_datasets_config(_C)
    add_fcos_config(_C)
    return _C
