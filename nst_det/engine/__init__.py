"""What both stages share on Detectron2's engine: atomic checkpoints and their checkpointer, the
launcher of both tools, the training loop's non-finite stop and exact resume, file paths in
configs, the device check."""
from nst_det import _d2_compat

_d2_compat.install()
