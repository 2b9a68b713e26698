"""Detectron2 models of nst_det; importing registers them (META_ARCH_REGISTRY, BACKBONE_REGISTRY)."""
from . import backbone  # noqa: F401
from .meta_arch import DistillGeneralizedRCNN  # noqa: F401
from .teacher import build_teacher, load_teacher_weights  # noqa: F401
