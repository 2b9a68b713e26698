"""The meta-architectures nst_det distils, by name: which student each distilling one holds, and
which config key gives each one's number of classes."""

__all__ = ["DISTILL_META_ARCHITECTURES", "NUM_CLASSES_KEYS", "num_classes_key", "num_classes"]

# Meta-architectures that hold a student and a teacher -> the student's own meta-architecture.
DISTILL_META_ARCHITECTURES = {
    "DistillGeneralizedRCNN": "GeneralizedRCNN",
    "DistillRetinaNet": "RetinaNet",
    "DistillFCOS": "YamlFCOS",
}
# The key of the number of classes of each meta-architecture (MODEL.ROI_HEADS for the others).
NUM_CLASSES_KEYS = {
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "DistillRetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "YamlFCOS": "MODEL.FCOS.NUM_CLASSES",
    "DistillFCOS": "MODEL.FCOS.NUM_CLASSES",
}


def num_classes_key(cfg) -> str:
    """The key of the number of classes of ``cfg``'s detector (e.g. MODEL.ROI_HEADS.NUM_CLASSES)."""
    return NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, "MODEL.ROI_HEADS.NUM_CLASSES")


def num_classes(cfg) -> int:
    """The number of classes of ``cfg``'s detector (the value of :func:`num_classes_key`)."""
    node = cfg
    for part in num_classes_key(cfg).split("."):
        node = node[part]
    return node
