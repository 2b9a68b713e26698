"""The detection stage, a Detectron2 project: importing it makes Detectron2 usable on this stack
first (through :mod:`nst_det.engine`) and registers nst_det's meta-architectures (DistillGeneralizedRCNN,
DistillRetinaNet, DistillFCOS, YamlFCOS),
backbones (Inception-BN, with FPN) and demo data sets in Detectron2's registries."""
import nst_det.engine  # noqa: F401  (first: applies nst_det._d2_compat)

from . import backbone, data  # noqa: E402,F401  (registers backbones and the demo data sets)
from .config import add_nst_config  # noqa: E402,F401
from .load_config import get_nst_cfg, load_nst_cfg, load_teacher_cfg, student_cfg  # noqa: E402,F401
from .fcos import YamlFCOS  # noqa: E402,F401  (registers FCOS built from MODEL.FCOS)
from .meta_arch import (  # noqa: E402,F401  (registers the distilling meta-architectures)
    DistillDetector,
    DistillFCOS,
    DistillGeneralizedRCNN,
    DistillRetinaNet,
)
from .teacher import build_teacher  # noqa: E402,F401
from .trainer import DistillTrainer, setup_cfg  # noqa: E402,F401
