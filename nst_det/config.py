"""Every config key nst_det adds to Detectron2's config, with its default (``MODEL.DISTILL``).

``tools/train_net.py`` calls :func:`add_nst_config` right after ``get_cfg()``; yaml files in
``configs/`` inherit through ``_BASE_`` and list only what they change.
"""
import importlib.util
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_nst_config", "get_nst_cfg", "load_teacher_cfg", "student_cfg",
           "DISTILL_META_ARCHITECTURES"]

_INCEPTION_BN_MODULE = "nst_det.modeling.backbone.inception_bn"
# Meta-architectures that hold a student GeneralizedRCNN and a teacher.
DISTILL_META_ARCHITECTURES = ("DistillGeneralizedRCNN",)


def add_nst_config(cfg: CN) -> CN:
    """Add the keys of NST distillation (``MODEL.DISTILL``) and of nst_det's backbones to ``cfg``."""
    _C = cfg
    _C.MODEL.DISTILL = CN()
    # Teacher detector's config file (a Detectron2 yaml; its MODEL.META_ARCHITECTURE must be a plain
    # detector such as GeneralizedRCNN). Required by DistillGeneralizedRCNN.
    _C.MODEL.DISTILL.TEACHER_CONFIG = ""
    # Teacher's trained weights (.pth of tools/train_net.py or a Detectron2 model-zoo .pkl), loaded
    # strictly: a missing, unexpected or wrongly shaped key is an error. Required.
    _C.MODEL.DISTILL.TEACHER_WEIGHTS = ""
    # Student features matched by NST: outputs of the student backbone (FPN "p2".."p6") or of its
    # bottom-up network ("res2".."res5").
    _C.MODEL.DISTILL.STUDENT_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Teacher features, matched in order with STUDENT_FEATURES; each pair must have the same stride.
    _C.MODEL.DISTILL.TEACHER_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Weight of each matched pair in loss_nst, one per STUDENT_FEATURES entry.
    _C.MODEL.DISTILL.LEVEL_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0]
    # Overall NST weight: loss_nst = WEIGHT * sum_l LEVEL_WEIGHTS[l] * MMD^2_l; 0 turns NST off.
    # 8: loss_nst 1-2 times the task loss on the demo, the best of 2/4/8/20 there (docs/DETECTION.md).
    _C.MODEL.DISTILL.WEIGHT = 8.0
    # Linear warm-up of the distillation weights (NST and KD): scaled by min(1, iter / WARMUP_ITERS).
    # 0 = off.
    _C.MODEL.DISTILL.WARMUP_ITERS = 0

    _C.MODEL.DISTILL.LOSS = CN()
    # MMD kernel of NST: "poly" (paper's main choice), "linear" or "gaussian".
    _C.MODEL.DISTILL.LOSS.KERNEL = "poly"
    # Degree d of the polynomial kernel (x^T y + c)^d (paper: 2).
    _C.MODEL.DISTILL.LOSS.DEGREE = 2
    # Constant c of the polynomial kernel (paper: 0).
    _C.MODEL.DISTILL.LOSS.COEF = 0.0
    # Bandwidth sigma^2 of the Gaussian kernel; 0 = the data-driven rule of nst_det.losses.
    _C.MODEL.DISTILL.LOSS.SIGMA2 = 0.0

    _C.MODEL.DISTILL.KD = CN()
    # Knowledge distillation on the ROI box head's class logits, computed on the student's
    # sampled proposals (the teacher then also runs its box head).
    _C.MODEL.DISTILL.KD.ENABLED = False
    # Weight of loss_kd.
    _C.MODEL.DISTILL.KD.WEIGHT = 1.0
    # Softmax temperature of KD (paper, ImageNet: 4).
    _C.MODEL.DISTILL.KD.TEMPERATURE = 4.0

    if importlib.util.find_spec(_INCEPTION_BN_MODULE) is not None:
        from nst_det.modeling.backbone.inception_bn import add_inception_bn_config

        add_inception_bn_config(_C)
    return _C


def get_nst_cfg() -> CN:
    """Detectron2's default config with nst_det's keys added."""
    return add_nst_config(get_cfg())


def load_teacher_cfg(config_file: str) -> CN:
    """The frozen config of a teacher detector read from ``config_file`` (MODEL.DISTILL.TEACHER_CONFIG)."""
    if not config_file:
        raise ValueError(
            "MODEL.DISTILL.TEACHER_CONFIG is empty: DistillGeneralizedRCNN needs the teacher "
            "detector's config file (e.g. configs/voc_frcnn_R101_teacher.yaml)."
        )
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"teacher config file '{config_file}' (MODEL.DISTILL.TEACHER_CONFIG) does not exist "
            f"(relative paths are read from the current directory, {os.getcwd()})."
        )
    cfg = get_nst_cfg()
    cfg.merge_from_file(config_file)
    cfg.freeze()
    return cfg


def student_cfg(cfg: CN) -> CN:
    """A frozen copy of ``cfg`` that builds the student alone (a plain GeneralizedRCNN, no teacher):
    for evaluation, visualisation and export of a distilled model."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES:
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg
