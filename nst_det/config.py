"""Every config key nst_det adds to Detectron2's config, with its default (``MODEL.DISTILL``).

``tools/train_net.py`` calls :func:`add_nst_config` right after ``get_cfg()``; yaml files in
``configs/`` inherit through ``_BASE_`` and list only what they change.
"""
import importlib.util
import math
import os
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from nst_det.config_paths import missing_path_message, resolve_config_paths

__all__ = ["add_nst_config", "get_nst_cfg", "load_nst_cfg", "load_teacher_cfg", "student_cfg",
           "check_distill_cfg", "distills", "DISTILL_META_ARCHITECTURES", "PATH_KEYS"]

_INCEPTION_BN_MODULE = "nst_det.modeling.backbone.inception_bn"
# Meta-architectures that hold a student GeneralizedRCNN and a teacher.
DISTILL_META_ARCHITECTURES = ("DistillGeneralizedRCNN",)
# Config keys that hold file paths: read relative to the yaml that names them (nst_det.config_paths).
PATH_KEYS = ("MODEL.WEIGHTS", "MODEL.DISTILL.TEACHER_CONFIG", "MODEL.DISTILL.TEACHER_WEIGHTS")


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

    if importlib.util.find_spec(_INCEPTION_BN_MODULE) is not None:
        from nst_det.modeling.backbone.inception_bn import add_inception_bn_config

        add_inception_bn_config(_C)
    return _C


def get_nst_cfg() -> CN:
    """Detectron2's default config with nst_det's keys added."""
    return add_nst_config(get_cfg())


def load_nst_cfg(config_file: str, opts: Optional[Sequence[str]] = None) -> CN:
    """Defaults + nst_det's keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts``
    [KEY, VALUE, ...]; file paths read relative to the yaml that names them (``PATH_KEYS``);
    distillation settings checked (:func:`check_distill_cfg`); frozen."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    cfg = get_nst_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    resolve_config_paths(cfg, config_file, opts, PATH_KEYS)
    check_distill_cfg(cfg)
    cfg.freeze()
    return cfg


def _check_weight(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{key} is {value!r}: a distillation weight must be finite and >= 0 "
                         "(0 turns the term off)")


def check_distill_cfg(cfg: CN) -> None:
    """Raise a ValueError naming the key when a MODEL.DISTILL value cannot be right (negative or
    non-finite weights, negative SIGMA2, negative temperature or warm-up)."""
    d = cfg.MODEL.DISTILL
    _check_weight("MODEL.DISTILL.WEIGHT", d.WEIGHT)
    _check_weight("MODEL.DISTILL.KD.WEIGHT", d.KD.WEIGHT)
    for i, w in enumerate(d.LEVEL_WEIGHTS):
        _check_weight(f"MODEL.DISTILL.LEVEL_WEIGHTS[{i}]", w)
    if not (math.isfinite(d.LOSS.SIGMA2) and d.LOSS.SIGMA2 >= 0):
        raise ValueError(f"MODEL.DISTILL.LOSS.SIGMA2 is {d.LOSS.SIGMA2!r}: the Gaussian kernel's "
                         "bandwidth must be > 0, or 0 for the data-driven rule")
    if not (math.isfinite(d.KD.TEMPERATURE) and d.KD.TEMPERATURE > 0):
        raise ValueError(f"MODEL.DISTILL.KD.TEMPERATURE is {d.KD.TEMPERATURE!r}: it must be > 0")
    if d.WARMUP_ITERS < 0:
        raise ValueError(f"MODEL.DISTILL.WARMUP_ITERS is {d.WARMUP_ITERS}: it must be >= 0")


def distills(cfg: CN) -> bool:
    """True when ``cfg`` is a distillation config with a term on (NST weight > 0 or KD enabled
    with weight > 0): only then is a teacher built and its files needed."""
    d = cfg.MODEL.DISTILL
    return cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES and (
        d.WEIGHT > 0 or (d.KD.ENABLED and d.KD.WEIGHT > 0))


def load_teacher_cfg(config_file: str, device: Optional[str] = None) -> CN:
    """The frozen config of a teacher detector read from ``config_file``
    (MODEL.DISTILL.TEACHER_CONFIG), on ``device`` (the student's MODEL.DEVICE) when given."""
    key = "MODEL.DISTILL.TEACHER_CONFIG"
    if not config_file:
        raise ValueError(
            f"{key} is empty: DistillGeneralizedRCNN needs the teacher detector's config file "
            "(e.g. configs/voc_frcnn_R101_teacher.yaml) when a distillation weight is > 0."
        )
    if not os.path.isfile(config_file):
        raise FileNotFoundError(missing_path_message(key, config_file, what="teacher config file"))
    cfg = get_nst_cfg()
    cfg.merge_from_file(config_file)
    if device is not None:
        cfg.MODEL.DEVICE = device  # the teacher lives where the student lives
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
