"""Inception-BN as a Detectron2 backbone: the ``MODEL.INCEPTION_BN`` config keys and the
registered builders of the trunk (:class:`nst_det.inception_bn.InceptionBN`) alone and with FPN."""
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from nst_det.inception_bn import InceptionBN

__all__ = ["add_inception_bn_config", "build_inception_bn_backbone", "build_inception_bn_fpn_backbone"]


def add_inception_bn_config(cfg):
    """Add ``MODEL.INCEPTION_BN`` (the Inception-BN backbone's keys) to a Detectron2 config."""
    if "INCEPTION_BN" in cfg.MODEL:
        return
    cfg.MODEL.INCEPTION_BN = CN()
    # Stages the backbone returns: "stem" (stride 4, 192 ch), "inc3" (8, 320), "inc4" (16, 608),
    # "inc5" (32, 1024). FPN configs set MODEL.FPN.IN_FEATURES to (a subset of) these.
    cfg.MODEL.INCEPTION_BN.OUT_FEATURES = ["stem", "inc3", "inc4", "inc5"]
    # Normalization after every convolution (detectron2.layers.get_norm): "FrozenBN", "BN", "SyncBN".
    cfg.MODEL.INCEPTION_BN.NORM = "FrozenBN"
    # Leading stages frozen: 0 none, 1 stem (all stride-4 layers, as Detectron2's ResNet
    # FREEZE_AT=2), 2 + inc3, 3 + inc4, 4 all. Used instead of MODEL.BACKBONE.FREEZE_AT.
    cfg.MODEL.INCEPTION_BN.FREEZE_AT = 1


@BACKBONE_REGISTRY.register()
def build_inception_bn_backbone(cfg, input_shape: ShapeSpec):
    """Inception-BN trunk from ``cfg.MODEL.INCEPTION_BN``: images -> {stage: [N, C, H/s, W/s]}."""
    if "INCEPTION_BN" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.INCEPTION_BN is missing: call nst_det.detection.backbone.add_inception_bn_config(cfg) "
            "(or nst_det's add_nst_config) before merging the config file"
        )
    ib = cfg.MODEL.INCEPTION_BN
    return InceptionBN(
        in_channels=input_shape.channels,
        norm=ib.NORM,
        out_features=ib.OUT_FEATURES,
        freeze_at=ib.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_inception_bn_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Inception-BN + FPN (``cfg.MODEL.FPN``) + max-pooled top level: images -> {"p2".."p6": [N, 256, H/s, W/s]}."""
    bottom_up = build_inception_bn_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if not in_features or missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} must be a non-empty subset of "
            f"MODEL.INCEPTION_BN.OUT_FEATURES {list(bottom_up.output_shape())}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
