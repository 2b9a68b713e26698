"""Backbones registered in Detectron2's BACKBONE_REGISTRY."""
from .inception_bn import (  # noqa: F401
    add_inception_bn_config,
    build_inception_bn_backbone,
    build_inception_bn_fpn_backbone,
)
