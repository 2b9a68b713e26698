"""The frozen teacher detector: built from its own config, loaded strictly, never trained."""
import hashlib
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import nn

from nst_det.detection.load_config import DISTILL_META_ARCHITECTURES, load_teacher_cfg
from nst_det.engine.config_paths import missing_path_message

__all__ = ["build_teacher", "load_teacher_weights", "weights_checksum", "TeacherWeightsError"]

logger = logging.getLogger(__name__)

_SHOWN_KEYS = 5


class TeacherWeightsError(ValueError):
    """The teacher's weights file does not match the teacher's architecture key for key."""


def weights_checksum(path: str, length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _describe(keys) -> str:
    shown = ", ".join(str(k) for k in keys[:_SHOWN_KEYS])
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)}: {shown}{more}"


def load_teacher_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` into ``model`` strictly: any missing, unexpected or wrongly shaped key raises."""
    if not path:
        raise ValueError(
            "MODEL.DISTILL.TEACHER_WEIGHTS is empty: a teacher with random weights teaches nothing. "
            "Train the teacher first (e.g. tools/train_net.py with its config) and give its .pth."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_path_message(
            "MODEL.DISTILL.TEACHER_WEIGHTS", path, what="teacher weights file"))
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpoint = checkpointer._load_file(path)
    except Exception as e:  # torch/pickle raise many types for a file that is not a checkpoint
        raise TeacherWeightsError(f"cannot read teacher weights file '{path}': {e}") from e
    incompatible = checkpointer._load_model(checkpoint)
    # A wrongly shaped key is left out of the load, so it is also "missing": name it once, as
    # wrongly shaped. BatchNorm's step counters carry no weights: other frameworks' files lack them,
    # and a teacher trained with BN has them where its frozen copy (FrozenBN) has none.
    wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys
               if not k.endswith("num_batches_tracked") and k not in wrong_shape]
    unexpected = [k for k in incompatible.unexpected_keys if not k.endswith("num_batches_tracked")]
    shapes = [f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes]
    problems = []
    if missing:
        problems.append(f"missing keys {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_describe(unexpected)}")
    if shapes:
        problems.append(f"wrongly shaped keys {_describe(shapes)}")
    if problems:
        raise TeacherWeightsError(
            f"teacher weights file '{path}' does not match the teacher built from "
            f"MODEL.DISTILL.TEACHER_CONFIG: " + "; ".join(problems) + ". Check that the config "
            "and the weights belong to the same teacher."
        )


def build_teacher(cfg) -> nn.Module:
    """The teacher of ``cfg`` (MODEL.DISTILL): built on the student's MODEL.DEVICE, strictly
    loaded, in eval mode, frozen."""
    config_file = cfg.MODEL.DISTILL.TEACHER_CONFIG
    weights_file = cfg.MODEL.DISTILL.TEACHER_WEIGHTS
    teacher_cfg = load_teacher_cfg(config_file, device=cfg.MODEL.DEVICE)
    if teacher_cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES:
        raise ValueError(
            f"teacher config '{config_file}' has MODEL.META_ARCHITECTURE "
            f"'{teacher_cfg.MODEL.META_ARCHITECTURE}'; a teacher must be a plain detector "
            "(e.g. GeneralizedRCNN)."
        )
    teacher = build_model(teacher_cfg)
    load_teacher_weights(teacher, weights_file)
    teacher.eval()
    teacher.requires_grad_(False)
    logger.info(
        f"Teacher: config {config_file}, weights {weights_file} "
        f"(sha256 {weights_checksum(weights_file)}), "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, frozen."
    )
    return teacher
