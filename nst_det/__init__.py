"""nst_det: Neuron Selectivity Transfer (Huang & Wang, arXiv 1707.01219) for classification and
Detectron2 detection.

- :mod:`nst_det.losses`: the NST, KD, AT and FitNet losses, pure torch (no Detectron2 needed);
- :mod:`nst_det.engine`: what both stages share on Detectron2's engine (atomic checkpoints, the
  launcher, the training loop, config paths, the device check);
- :mod:`nst_det.detection`: the Detectron2 project (config keys, DistillGeneralizedRCNN, the
  Inception-BN backbone, data, evaluation, the trainer); importing it registers them;
- :mod:`nst_det.classification`: the ImageNet stage;
- :mod:`nst_det.convert`: classifier weights -> Detectron2 backbone weights.

Importing ``nst_det`` imports the losses only; the packages that need Detectron2 make it usable
on this stack themselves (:mod:`nst_det._d2_compat`).
"""
from nst_det.losses import (  # noqa: F401
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
