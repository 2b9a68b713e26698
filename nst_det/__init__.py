"""nst_det: Neuron Selectivity Transfer (Huang & Wang, arXiv 1707.01219) for classification and
Detectron2 detection.

Packages, each importing only those above it:

- :mod:`nst_det.losses`: the NST, KD, AT and FitNet losses, pure torch (no Detectron2 needed);
- :mod:`nst_det.engine`: what both stages' training needs on Detectron2's engine (the training
  loop, atomic checkpoints and their checkpointer, the launcher, the ``DISTILL`` vocabulary, config
  paths, the device check); importing it applies :mod:`nst_det._d2_compat`, the fixes Detectron2
  needs on this stack;
- :mod:`nst_det.inception_bn`: the Inception-BN trunk both stages wrap;
- :mod:`nst_det.classification` (the ImageNet stage) and :mod:`nst_det.detection` (the Detectron2
  project: config keys, the distilling meta-architectures, backbones, data, evaluation, the
  trainer; importing it registers them), side by side, neither importing the other;
- :mod:`nst_det.convert`: classifier weights -> Detectron2 backbone weights;
- :mod:`nst_det.research`: demos, benchmarks, figures and data writers, which import the library
  and are never imported by it.

Importing ``nst_det`` imports the losses only.
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
