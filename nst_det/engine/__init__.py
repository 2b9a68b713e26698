"""What both stages' training needs, on Detectron2's engine: the training loop (non-finite stop,
exact resume), atomic checkpoints and their checkpointer, the launcher of both tools, the shared
``DISTILL`` config vocabulary, file paths in configs, the device check, the warm-up.

Importing it applies :func:`nst_det._d2_compat.install` (the one place that does): the fixes
Detectron2 needs on this stack, before any module of nst_det imports Detectron2's layers."""
from nst_det import _d2_compat

_d2_compat.install()
