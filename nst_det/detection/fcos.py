"""FCOS from a yaml config: Detectron2 ships FCOS (``detectron2.modeling.meta_arch.fcos``) only as a
LazyConfig (``COCO-Detection/fcos_R_50_FPN_1x.py``); ``YamlFCOS`` builds the same model from
``MODEL.FCOS`` keys, so that ``tools/train_net.py`` trains it (and ``DistillFCOS`` distils it)
like every other detector of nst_det. The defaults are those of that LazyConfig."""
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

__all__ = ["add_fcos_config", "YamlFCOS", "build_fcos_resnet_fpn_backbone"]


def add_fcos_config(cfg: CN) -> CN:
    """Add the ``MODEL.FCOS`` keys of :class:`YamlFCOS` to ``cfg``."""
    _C = cfg
    _C.MODEL.FCOS = CN()
    # Number of object classes (no background class: sigmoid per class).
    _C.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone outputs the head reads, from the finest to the coarsest level.
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 convolutions of the classification and of the box branch.
    _C.MODEL.FCOS.NUM_CONVS = 4
    # Normalisation of those convolutions ("GN" as the LazyConfig, "" for none).
    _C.MODEL.FCOS.NORM = "GN"
    # Prior probability of a positive location, sets the bias of the class logits at init.
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    # Radius (in strides) of the centre of a ground-truth box whose locations are positive.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Focal loss of the classification branch.
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Inference: score threshold (on sqrt(score * centerness)), candidates per level, NMS IoU.
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    return _C


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + FPN with P6 and P7 computed from P5, as FCOS's LazyConfig (RetinaNet's
    ``build_retinanet_resnet_fpn_backbone`` computes them from C5)."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@META_ARCH_REGISTRY.register()
class YamlFCOS(FCOS):
    """Detectron2's FCOS built from ``MODEL.FCOS`` (and MODEL.BACKBONE, MODEL.PIXEL_MEAN/STD,
    INPUT.FORMAT, TEST.DETECTIONS_PER_IMAGE); ``input_format`` is kept as the other detectors
    keep it."""

    @configurable
    def __init__(self, *, input_format: str = "BGR", **kwargs):
        super().__init__(**kwargs)
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [n for n in f.IN_FEATURES if n not in shapes]
        if missing:
            raise ValueError(f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone "
                             f"({cfg.MODEL.BACKBONE.NAME}) does not give; it gives {sorted(shapes)}")
        channels = {shapes[n].channels for n in f.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(f"MODEL.FCOS.IN_FEATURES {list(f.IN_FEATURES)} have different channel "
                             f"counts {sorted(channels)}: the shared head needs one")
        width = channels.pop()
        head = FCOSHead(
            input_shape=[ShapeSpec(channels=width)] * len(f.IN_FEATURES),
            conv_dims=[width] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            norm=f.NORM,
            prior_prob=f.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }
