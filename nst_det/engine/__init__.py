"""Training and evaluation loops of the detection stage (Detectron2 trainers)."""
from .trainer import DistillTrainer, setup_cfg  # noqa: F401
