"""Tiny generated data and configs for the tests of the classification stage (CPU, seconds)."""
import torch

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.config import get_cls_config
from nst_det.classification.models import build_classifier


class PatternDataset(torch.utils.data.Dataset):
    """``n`` images [3, size, size]: a class-specific bright square plus fixed noise; label in
    [0, num_classes). ``augment`` rolls each image by a random shift from torch's global RNG."""

    def __init__(self, n=32, size=16, num_classes=4, augment=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        self.images = 0.3 * torch.randn(n, 3, size, size, generator=g)
        q = size // 2
        for i, c in enumerate(self.labels.tolist()):
            y, x = divmod(c % 4, 2)
            self.images[i, c % 3, y * q:(y + 1) * q, x * q:(x + 1) * q] += 2.0
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        if self.augment:
            dy, dx = torch.randint(-1, 2, (2,)).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        return image, int(self.labels[i])


def tiny_cfg(tmp_path, teacher_weights="", **distill):
    """demo_student <- demo_teacher config on 4 classes, batch 8, on the CPU, for PatternDataset."""
    cfg = get_cls_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.NUM_CLASSES = 4
    cfg.MODEL.STUDENT.NAME = "demo_student"
    cfg.DISTILL.TEACHER.NAME = "demo_teacher"
    cfg.DISTILL.TEACHER.WEIGHTS = teacher_weights
    cfg.DATA.NAME = "demo_digits"
    cfg.DATA.NUM_WORKERS = 0
    cfg.SOLVER.BATCH_SIZE = 8
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.EPOCHS = 2
    cfg.SOLVER.STEPS = (1,)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.LOG_PERIOD = 1
    for key, value in distill.items():  # e.g. nst_weight=50.0, warmup_iters=5
        if key == "warmup_iters":
            cfg.DISTILL.WARMUP_ITERS = value
            continue
        term, field = key.split("_", 1)
        cfg.DISTILL[term.upper()][field.upper()] = value
    return cfg


def save_teacher(tmp_path, name="demo_teacher", num_classes=4, seed=1):
    """A random teacher's weights saved as a plain state dict; returns the path."""
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pth"
    torch.save(build_classifier(name, num_classes).state_dict(), path)
    return str(path)
