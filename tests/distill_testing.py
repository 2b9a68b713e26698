"""Helpers of the detection-distillation tests: a tiny teacher/student config pair on the demo
base config, a randomly initialised teacher saved as its weights file (a checkpoint or a .pkl of
the model zoo), tiny demo data."""
import contextlib
import os
import pickle

import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from nst_det.detection.data import register_demo_datasets
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.teacher import build_teacher_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_BASE = os.path.join(ROOT, "configs", "demo", "Base-det-demo.yaml")

# Small and fast: 2 images a batch, few proposals; everything else from the demo base.
TINY = [
    "SOLVER.IMS_PER_BATCH", 2,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 20,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 50,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 10,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
]


def write_teacher_config(folder, extra: str = "") -> str:
    """A teacher config file (the demo base, R-18 FPN) in ``folder``; ``extra`` yaml is appended."""
    path = os.path.join(str(folder), "teacher.yaml")
    with open(path, "w") as f:
        f.write(f'_BASE_: "{DEMO_BASE}"\n{extra}')
    return path


def save_random_teacher(teacher_config: str, path: str, seed: int = 123) -> str:
    """Weights file of the teacher of ``teacher_config`` with random weights (a .pth with "model")."""
    torch.manual_seed(seed)
    teacher = build_teacher_model(teacher_config)
    torch.save({"model": teacher.state_dict()}, path)
    return path


def save_model_zoo_pkl(model, path: str, drop=()) -> str:
    """``model``'s weights as Detectron2's model zoo writes them (numpy arrays under "model",
    without the keys in ``drop``) at ``path``."""
    state = {k: v.numpy() for k, v in model.state_dict().items() if k not in drop}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return path


def tiny_distill_cfg(folder, opts=(), teacher_extra: str = ""):
    """A frozen DistillGeneralizedRCNN config: tiny demo student, random teacher in ``folder``."""
    teacher_config = write_teacher_config(folder, teacher_extra)
    teacher_weights = save_random_teacher(teacher_config, os.path.join(str(folder), "teacher.pth"))
    return load_nst_cfg(DEMO_BASE, TINY + [
        "MODEL.META_ARCHITECTURE", "DistillGeneralizedRCNN",
        "DISTILL.TEACHER.CONFIG", teacher_config,
        "DISTILL.TEACHER.WEIGHTS", teacher_weights,
        "DISTILL.NST.WEIGHT", 8.0,
        "OUTPUT_DIR", os.path.join(str(folder), "out"),
    ] + list(opts))


@contextlib.contextmanager
def registered_demo_data(root, num_train: int, num_test: int, seed: int):
    """The demo set generated small (64 x 80 images) under ``root``/demo_det and registered in
    Detectron2's catalogs while the block runs; the default registration is restored after."""
    generate_demo_data(os.path.join(str(root), "demo_det"), num_train=num_train, num_val=0,
                       num_test=num_test, seed=seed, height=64, width=80)
    register_demo_datasets(str(root))
    try:
        yield root
    finally:
        register_demo_datasets()
