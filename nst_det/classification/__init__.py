"""Classification stage: classifiers by name, feature taps, and (in the training modules) the loop."""
from .models import (  # noqa: F401
    available_classifiers,
    build_classifier,
    load_classifier_state_dict,
    load_classifier_weights,
)
from .taps import FeatureTaps, default_tap, tappable_layers  # noqa: F401
