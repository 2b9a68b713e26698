"""nst_det: Neuron Selectivity Transfer (Huang & Wang, arXiv 1707.01219) for classification and
Detectron2 detection. Importing the package makes Detectron2 usable on this stack and registers
nst_det's configs, backbones, meta-architectures and demo data sets in Detectron2's registries."""
from nst_det import _d2_compat

_d2_compat.install()

from nst_det import data, modeling  # noqa: E402,F401  (registers data sets, backbones, meta-archs)
from nst_det.config import add_nst_config  # noqa: E402,F401
from nst_det.losses import (  # noqa: E402,F401
    ATLoss,
    FitNetLoss,
    KDLoss,
    NSTLoss,
    at_loss,
    fitnet_loss,
    kd_loss,
    nst_loss,
)

__version__ = "0.1.0"
