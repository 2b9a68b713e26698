"""Reading detection configs: Detectron2's defaults + nst_det's keys + a yaml + command-line
overrides, file paths relative to the yaml that names them, distillation settings checked; the
teacher's config; the plain student's config."""
import os
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from nst_det.engine.config_paths import missing_path_message, resolve_config_paths
from nst_det.engine.distill_config import check_distill_config, check_renamed_keys

from .config import add_nst_config

__all__ = ["get_nst_cfg", "load_nst_cfg", "load_teacher_cfg", "student_cfg", "distills",
           "DISTILL_META_ARCHITECTURES", "PATH_KEYS"]

# Meta-architectures that hold a student GeneralizedRCNN and a teacher.
DISTILL_META_ARCHITECTURES = ("DistillGeneralizedRCNN",)
# Config keys that hold file paths: read relative to the yaml that names them.
PATH_KEYS = ("MODEL.WEIGHTS", "DISTILL.TEACHER.CONFIG", "DISTILL.TEACHER.WEIGHTS")


def get_nst_cfg() -> CN:
    """Detectron2's default config with nst_det's keys added."""
    return add_nst_config(get_cfg())


def load_nst_cfg(config_file: str, opts: Optional[Sequence[str]] = None) -> CN:
    """Defaults + nst_det's keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts``
    [KEY, VALUE, ...]; file paths read relative to the yaml that names them (``PATH_KEYS``);
    distillation settings checked (:func:`~nst_det.engine.distill_config.check_distill_config`);
    frozen. A key of an earlier version is a KeyError naming its new name."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    check_renamed_keys(config_file, opts)
    cfg = get_nst_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    resolve_config_paths(cfg, config_file, opts, PATH_KEYS)
    check_distill_config(cfg)
    cfg.freeze()
    return cfg


def distills(cfg: CN) -> bool:
    """True when ``cfg`` is a distillation config with a term on (DISTILL.NST.WEIGHT or
    DISTILL.KD.WEIGHT > 0): only then is a teacher built and its files needed."""
    d = cfg.DISTILL
    return cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES and (
        d.NST.WEIGHT > 0 or d.KD.WEIGHT > 0)


def load_teacher_cfg(config_file: str, device: Optional[str] = None) -> CN:
    """The frozen config of a teacher detector read from ``config_file``
    (DISTILL.TEACHER.CONFIG), on ``device`` (the student's MODEL.DEVICE) when given."""
    key = "DISTILL.TEACHER.CONFIG"
    if not config_file:
        raise ValueError(
            f"{key} is empty: DistillGeneralizedRCNN needs the teacher detector's config file "
            "(e.g. configs/voc_frcnn_R101_teacher.yaml) when a distillation weight is > 0."
        )
    if not os.path.isfile(config_file):
        raise FileNotFoundError(missing_path_message(key, config_file, what="teacher config file"))
    check_renamed_keys(config_file)
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
