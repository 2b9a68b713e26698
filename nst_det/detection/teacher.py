"""The frozen teacher detector: built from its own config (a yaml, a LazyConfig ``.py``, or either
from Detectron2's model zoo), loaded strictly, never trained."""
import logging
import os
import re

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from nst_det.detection.load_config import (
    DISTILL_META_ARCHITECTURES,
    is_lazy_config,
    load_teacher_cfg,
    model_zoo_config_file,
)
from nst_det.engine.checkpointer import load_weights_strictly, weights_checksum
from nst_det.engine.config_paths import local_path, missing_path_message
from nst_det.engine.frozen import freeze

__all__ = ["build_teacher", "build_teacher_from_files", "build_teacher_model", "build_lazy_teacher",
           "has_transformer_backbones"]

logger = logging.getLogger(__name__)

_KEY = "DISTILL.TEACHER.CONFIG"


def build_teacher(cfg) -> nn.Module:
    """The teacher of ``cfg`` (DISTILL): built on the student's MODEL.DEVICE, strictly
    loaded, in eval mode, frozen."""
    return build_teacher_from_files(cfg.DISTILL.TEACHER.CONFIG, cfg.DISTILL.TEACHER.WEIGHTS,
                                    device=cfg.MODEL.DEVICE, config_key=_KEY,
                                    weights_key="DISTILL.TEACHER.WEIGHTS")


def build_teacher_from_files(config: str, weights: str, device: str = "cpu", *,
                             config_key: str = "model.teacher.config",
                             weights_key: str = "model.teacher.weights") -> nn.Module:
    """The frozen teacher detector of the config file ``config`` (a yaml, a LazyConfig ``.py``, or
    ``zoo://`` + either of Detectron2's model zoo) with the weights file ``weights`` loaded
    strictly, on ``device``, in eval mode, without gradients; a LazyConfig teacher's BatchNorm
    layers become FrozenBatchNorm2d. ``config_key`` / ``weights_key`` name the two settings in
    messages (the yaml's DISTILL.TEACHER.*, or where a LazyConfig holds them: LazyCall-able as
    ``L(build_teacher_from_files)(config=..., weights=...)``, see nst_det.detection.lazy)."""
    config, weights = local_path(config), local_path(weights)
    teacher = build_teacher_model(config, device=device, key=config_key)
    load_weights_strictly(teacher, weights, weights_key, what="teacher weights file",
                          loaded_into=f"the teacher built from {config_key}")
    if is_lazy_config(config):
        _freeze_batch_norms(teacher, config)
    freeze(teacher)
    logger.info(
        f"Teacher: {type(teacher).__name__}, config {config}, weights {weights} "
        f"(sha256 {weights_checksum(weights)}), "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, frozen."
    )
    return teacher


def build_teacher_model(config_file: str, device: str = "cpu", key: str = _KEY) -> nn.Module:
    """The detector of ``config_file`` (DISTILL.TEACHER.CONFIG: a yaml or a LazyConfig, local or
    ``zoo://``) as its config initialises it, on ``device`` (where the student lives): no weights
    loaded, not frozen."""
    if is_lazy_config(config_file):
        return build_lazy_teacher(config_file, key).to(device)
    teacher_cfg = load_teacher_cfg(config_file, device=device, key=key)
    if teacher_cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES:
        raise ValueError(
            f"teacher config '{config_file}' has MODEL.META_ARCHITECTURE "
            f"'{teacher_cfg.MODEL.META_ARCHITECTURE}'; a teacher must be a plain detector "
            "(e.g. GeneralizedRCNN)."
        )
    return build_model(teacher_cfg)


def build_lazy_teacher(config_file: str, key: str = _KEY) -> nn.Module:
    """The ``model`` of a LazyConfig file (``DISTILL.TEACHER.CONFIG``, a local ``.py`` or ``zoo://``
    + one of Detectron2's model zoo), instantiated with random weights; its ``input_format`` taken
    from the config's training mapper (``dataloader.train.mapper.image_format``) when the model
    has none (FCOS)."""
    from detectron2.config import LazyConfig, instantiate

    path = model_zoo_config_file(config_file, key)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_path_message(key, path, what="teacher LazyConfig file"))
    try:
        lazy = LazyConfig.load(path)
        if "model" not in lazy:
            raise ValueError(f"{key} '{config_file}' is a LazyConfig file without a `model`")
        teacher = instantiate(lazy.model)
    except (ImportError, RuntimeError) as e:
        _explain_missing_backbone(config_file, e, key)
        raise
    if type(teacher).__name__ in DISTILL_META_ARCHITECTURES:
        raise ValueError(f"{key} '{config_file}' builds a {type(teacher).__name__}; a teacher "
                         "must be a plain detector (e.g. GeneralizedRCNN)")
    if not isinstance(getattr(teacher, "input_format", None), str):
        try:
            image_format = lazy.dataloader.train.mapper.image_format
        except (AttributeError, KeyError) as e:
            raise ValueError(
                f"{key} '{config_file}': its model has no input_format and the config no "
                f"dataloader.train.mapper.image_format, so the teacher's colour order is unknown"
            ) from e
        teacher.input_format = image_format
    return teacher


# The transformer backbones of Detectron2's main branch (detectron2/modeling/backbone/{vit,mvit,
# swin}.py); Detectron2 v0.6 has none of them.
_TRANSFORMER_BACKBONES = ("ViT", "SimpleFeaturePyramid", "MViT", "SwinTransformer")
_TRANSFORMER_WORDS = re.compile(r"\b(ViT|SimpleFeaturePyramid|MViT|SwinTransformer|vitdet|"
                                r"mvitv2|backbone\.(vit|mvit|swin))", re.IGNORECASE)


def has_transformer_backbones() -> bool:
    """True when the installed Detectron2 has the transformer backbones of its main branch
    (ViT + SimpleFeaturePyramid, MViT, SwinTransformer); False on v0.6. Probed, never read from
    a version string (both call themselves 0.6)."""
    import detectron2.modeling.backbone as backbones

    return all(hasattr(backbones, name) for name in _TRANSFORMER_BACKBONES)


def _explain_missing_backbone(config_file: str, error: BaseException, key: str = _KEY) -> None:
    """Raise an ImportError that says what to install when ``error`` (raised while loading or
    instantiating the LazyConfig teacher ``config_file``) comes from a missing transformer
    backbone (Detectron2 v0.6) or a missing timm; return otherwise."""
    name = getattr(error, "name", None) or ""
    if isinstance(error, ImportError) and name.split(".")[0] == "timm":
        raise ImportError(
            f"{key} '{config_file}' builds a backbone of Detectron2 that needs the package timm, "
            f"which is not installed: pip install timm ({error})") from error
    if not has_transformer_backbones() and _TRANSFORMER_WORDS.search(f"{name} {error}"):
        raise ImportError(
            f"{key} '{config_file}' builds a transformer backbone (ViT/ViTDet, MViTv2 or Swin) "
            f"that the installed Detectron2 does not have: these backbones "
            f"(detectron2.modeling.backbone.vit, mvit, swin) need Detectron2's main branch "
            f"(pip install 'git+https://github.com/facebookresearch/detectron2.git'), and timm "
            f"({error})") from error


def _freeze_batch_norms(teacher: nn.Module, config_file: str) -> None:
    """Turn the teacher's BatchNorm / SyncBatchNorm layers (a LazyConfig's "SyncBN", "BN") into
    FrozenBatchNorm2d with the loaded statistics: a frozen teacher needs no batch statistics and
    no process group; logged."""
    batch_norms = (nn.modules.batchnorm.BatchNorm2d, nn.modules.batchnorm.SyncBatchNorm)
    count = sum(isinstance(m, batch_norms) for m in teacher.modules())
    if count:
        FrozenBatchNorm2d.convert_frozen_batchnorm(teacher)
        logger.info(f"Teacher {config_file}: {count} BatchNorm/SyncBatchNorm layers turned into "
                    f"FrozenBatchNorm2d (the teacher is frozen: its statistics are kept as loaded)")
