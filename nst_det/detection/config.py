"""Every config key nst_det adds to Detectron2's config, with its default (``MODEL.DISTILL``).

``tools/train_net.py`` calls :func:`add_nst_config` right after ``get_cfg()`` (through
:func:`nst_det.detection.load_config.load_nst_cfg`); yaml files in ``configs/`` inherit through
``_BASE_`` and list only what they change.
"""
from detectron2.config import CfgNode as CN

from .backbone.inception_bn import add_inception_bn_config
from .data.custom import add_custom_datasets_config

__all__ = ["add_nst_config"]


def add_nst_config(cfg: CN) -> CN:
    """Add the keys of NST distillation (``MODEL.DISTILL``) and of nst_det's backbones to ``cfg``."""
    _C = cfg
    _C.MODEL.DISTILL = CN()
    # Teacher detector's config file (a Detectron2 yaml; its MODEL.META_ARCHITECTURE must be a plain
    # detector such as GeneralizedRCNN), relative to the yaml that names it. Required by
    # DistillGeneralizedRCNN when a distillation weight is > 0.
    _C.MODEL.DISTILL.TEACHER_CONFIG = ""
    # Teacher's trained weights (.pth of tools/train_net.py or a Detectron2 model-zoo .pkl), loaded
    # strictly: a missing, unexpected or wrongly shaped key is an error. Required when a
    # distillation weight is > 0.
    _C.MODEL.DISTILL.TEACHER_WEIGHTS = ""
    # Student features matched by NST: outputs of the student backbone (FPN "p2".."p6") or of its
    # bottom-up network ("res2".."res5").
    _C.MODEL.DISTILL.STUDENT_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Teacher features, matched in order with STUDENT_FEATURES; each pair must have the same stride.
    _C.MODEL.DISTILL.TEACHER_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Weight of each matched pair in loss_nst, one per STUDENT_FEATURES entry.
    _C.MODEL.DISTILL.LEVEL_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0]
    # Overall NST weight: loss_nst = WEIGHT * sum_l LEVEL_WEIGHTS[l] * MMD^2_l; 0 turns NST off.
    # Weights must be finite and >= 0.
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
    # Bandwidth sigma^2 of the Gaussian kernel (> 0); 0 = the data-driven rule of nst_det.losses.
    _C.MODEL.DISTILL.LOSS.SIGMA2 = 0.0

    _C.MODEL.DISTILL.KD = CN()
    # Knowledge distillation on the ROI box head's class logits, computed on the student's
    # sampled proposals (the teacher then also runs its box head).
    _C.MODEL.DISTILL.KD.ENABLED = False
    # Weight of loss_kd.
    _C.MODEL.DISTILL.KD.WEIGHT = 1.0
    # Softmax temperature of KD (paper, ImageNet: 4).
    _C.MODEL.DISTILL.KD.TEMPERATURE = 4.0

    # Let MODEL.WEIGHTS leave most of the detector unloaded (a file of another architecture). By
    # default that is an error: training from it, or evaluating it, gives meaningless numbers.
    _C.MODEL.ALLOW_PARTIAL_WEIGHTS = False

    add_inception_bn_config(_C)
    add_custom_datasets_config(_C)
    return _C
