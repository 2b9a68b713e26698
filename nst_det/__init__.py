"""nst_det: Neuron Selectivity Transfer (Huang & Wang, arXiv 1707.01219) for classification and
Detectron2 detection. Importing the package makes Detectron2 usable on this stack and registers
nst_det's configs, backbones and meta-architectures in Detectron2's registries."""
from nst_det import _d2_compat

_d2_compat.install()

__version__ = "0.1.0"
