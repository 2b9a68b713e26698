"""The frozen teacher detector: built from its own config, loaded strictly, never trained."""
import logging

from detectron2.modeling import build_model
from torch import nn

from nst_det.detection.load_config import DISTILL_META_ARCHITECTURES, load_teacher_cfg
from nst_det.engine.checkpointer import load_weights_strictly, weights_checksum

__all__ = ["build_teacher"]

logger = logging.getLogger(__name__)


def build_teacher(cfg) -> nn.Module:
    """The teacher of ``cfg`` (DISTILL): built on the student's MODEL.DEVICE, strictly
    loaded, in eval mode, frozen."""
    config_file = cfg.DISTILL.TEACHER.CONFIG
    weights_file = cfg.DISTILL.TEACHER.WEIGHTS
    teacher_cfg = load_teacher_cfg(config_file, device=cfg.MODEL.DEVICE)
    if teacher_cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES:
        raise ValueError(
            f"teacher config '{config_file}' has MODEL.META_ARCHITECTURE "
            f"'{teacher_cfg.MODEL.META_ARCHITECTURE}'; a teacher must be a plain detector "
            "(e.g. GeneralizedRCNN)."
        )
    teacher = build_model(teacher_cfg)
    load_weights_strictly(teacher, weights_file, "DISTILL.TEACHER.WEIGHTS",
                          what="teacher weights file",
                          loaded_into="the teacher built from DISTILL.TEACHER.CONFIG")
    teacher.eval()
    teacher.requires_grad_(False)
    logger.info(
        f"Teacher: config {config_file}, weights {weights_file} "
        f"(sha256 {weights_checksum(weights_file)}), "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, frozen."
    )
    return teacher
