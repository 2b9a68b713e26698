"""Conversion of classifier weights into Detectron2 backbone weights (tools/convert_cls_to_d2.py)."""
from .convert import (  # noqa: F401
    convert_checkpoint,
    convert_classifier_to_d2,
    d2_config_hints,
    detect_arch,
)
