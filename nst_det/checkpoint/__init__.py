"""Conversion of classifier weights into Detectron2 backbone weights (tools/convert_cls_to_d2.py);
atomic checkpoints of both trainers."""
from .convert import (  # noqa: F401
    convert_checkpoint,
    convert_classifier_to_d2,
    d2_config_hints,
    detect_arch,
)
from .atomic import (  # noqa: F401
    UnreadableCheckpointError,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
)
from .detection_checkpointer import AtomicDetectionCheckpointer  # noqa: F401
