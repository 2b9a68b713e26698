"""Classification stage: classifiers by name, feature taps, data, distillation and the trainer
(:mod:`.trainer`). Importing it makes Detectron2 usable on this stack first (through
:mod:`nst_det.engine`): the Inception-BN trunk and the trainer use Detectron2's layers and engine."""
import nst_det.engine  # noqa: F401  (first: applies nst_det._d2_compat)

from .models import (  # noqa: E402,F401
    available_classifiers,
    build_classifier,
    load_classifier_state_dict,
)
from .taps import FeatureTaps, default_tap, tappable_layers  # noqa: E402,F401
