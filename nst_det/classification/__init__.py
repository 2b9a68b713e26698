"""Classification stage: classifiers by name, feature taps, and (in the training modules) the loop.
Importing it makes Detectron2 usable on this stack (:mod:`nst_det._d2_compat`): the Inception-BN
trunk and the training loop use Detectron2's layers and engine."""
from nst_det import _d2_compat

_d2_compat.install()

from .models import (  # noqa: E402,F401
    available_classifiers,
    build_classifier,
    load_classifier_state_dict,
)
from .taps import FeatureTaps, default_tap, tappable_layers  # noqa: E402,F401
