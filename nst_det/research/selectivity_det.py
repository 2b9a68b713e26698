"""Pictures of neuron selectivity of the detection stage: for one image, the most selective
L2-normalised channel maps of every matched backbone level (DISTILL.STUDENT_FEATURES /
TEACHER_FEATURES) of the teacher, of the student trained alone and of the NST-distilled student,
with each student level's NST loss (MMD^2, the config's kernel) to the teacher's.

Each detector sees the image as in inference: read in its own colour order (``input_format``),
resized by the config's test-time resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, as Detectron2's
DefaultPredictor), normalised and padded by its own ``preprocess_image``; the features are its
backbone's outputs (and its bottom-up network's, for matched ``res*`` stages), in eval mode. The
stage-independent parts (normalising, ranking, drawing) are :mod:`nst_det.research.selectivity`.
"""
import logging
import os
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from torch import nn

from nst_det.engine.checkpointer import load_weights_strictly
from nst_det.engine.device import check_device
from nst_det.research.selectivity import (
    SelectivityRow,
    kernel_text,
    mmd2_to_teacher,
    normalised_maps,
    save_selectivity_grid,
)

from nst_det.detection.load_config import student_cfg
from nst_det.detection.meta_arch import pair_features
from nst_det.detection.teacher import build_teacher

__all__ = ["LevelSelectivity", "DetectionSelectivity", "selectivity_image_file",
           "build_student_with_weights", "matched_features", "backbone_features",
           "detection_selectivity", "save_detection_selectivity_figure", "RANDOM_INIT"]

logger = logging.getLogger(__name__)

# Student weights that mean "random initialisation" (torch seed 0): the student before any training.
RANDOM_INIT = ("", "init")


class LevelSelectivity(NamedTuple):
    """One matched level for one image: the student's feature name and the teacher's, the features
    of the teacher [C_T, H, W], of the student alone (``before``) and of the NST student
    (``after``) [C_S, H, W] (raw, on the CPU), and the MMD^2 of each student's to the teacher's."""

    student_feature: str
    teacher_feature: str
    teacher: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    mmd2_before: float
    mmd2_after: float


class DetectionSelectivity(NamedTuple):
    """What :func:`detection_selectivity` computes: the image file, the image as the student saw
    it (RGB uint8 [H, W, 3], after the test-time resize) and one :class:`LevelSelectivity` per
    matched level, in the config's order."""

    image_file: str
    image: torch.Tensor
    levels: List[LevelSelectivity]


def selectivity_image_file(cfg, image_index: int = 0, image_file: str = "") -> str:
    """``image_file`` when given (it must exist), else the file of image ``image_index`` of the
    config's first DATASETS.TEST set (read through Detectron2's DatasetCatalog)."""
    if image_file:
        if not os.path.isfile(image_file):
            raise FileNotFoundError(f"image file '{image_file}' (--image) does not exist")
        return image_file
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: name a test set, or give an image file")
    name = cfg.DATASETS.TEST[0]
    if name not in DatasetCatalog.list():
        raise KeyError(f"data set '{name}' (DATASETS.TEST) is not registered in Detectron2's "
                       f"DatasetCatalog")
    dicts = DatasetCatalog.get(name)
    if not 0 <= image_index < len(dicts):
        raise IndexError(f"image index {image_index} is outside data set '{name}' "
                         f"(DATASETS.TEST[0]) of {len(dicts)} images")
    return dicts[image_index]["file_name"]


def build_student_with_weights(cfg, weights: str, role: str) -> nn.Module:
    """The student alone (:func:`~nst_det.detection.load_config.student_cfg`: its plain detector,
    no teacher) on MODEL.DEVICE in eval mode, with ``weights`` loaded strictly (every tensor, no
    other, every shape right); "" or "init" = random initialisation (torch seed 0). ``role`` says
    which student it is in errors (e.g. "student alone"): a missing file is a FileNotFoundError
    naming it."""
    torch.manual_seed(0)  # "init": the same random initialisation every time
    model = build_model(student_cfg(cfg))
    if weights in RANDOM_INIT:
        logger.info(f"{role}: random initialisation")
    else:
        load_weights_strictly(model, weights, role, what="student weights file",
                              loaded_into=f"the student built from the config "
                                          f"({type(model).__name__})")
    return model.eval()


def matched_features(cfg, student: nn.Module, teacher: nn.Module) -> List[Tuple[str, str]]:
    """[(student feature, teacher feature)] that NST matches: DISTILL.STUDENT_FEATURES /
    TEACHER_FEATURES, filled when empty as the distilling detector fills them
    (:func:`~nst_det.detection.meta_arch.pair_features`, DISTILL.MATCH_LEVELS, with its checks:
    lists of different lengths or a name a backbone does not give are a ValueError naming the
    key)."""
    d = cfg.DISTILL
    student_names, teacher_names, _, _ = pair_features(
        student.backbone, teacher.backbone, d.STUDENT_FEATURES, d.TEACHER_FEATURES, d.MATCH_LEVELS)
    return list(zip(student_names, teacher_names))


def _test_resize(cfg) -> T.Augmentation:
    """The config's test-time resize, as Detectron2's DefaultPredictor makes it."""
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST],
                                cfg.INPUT.MAX_SIZE_TEST)


def backbone_features(model: nn.Module, image_file: str, resize: T.Augmentation,
                      names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """{name: [C, H, W] float32 on the CPU} of ``model``'s backbone outputs (and of its bottom-up
    network's, for names the backbone does not give) for ``image_file`` read in ``model``'s
    ``input_format``, resized by ``resize`` and preprocessed by ``model.preprocess_image``; under
    ``torch.no_grad()``, the model in eval mode."""
    image = read_image(image_file, format=model.input_format)  # [H, W, C] uint8
    image = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image([{"image": tensor}])
        features = dict(model.backbone(images.tensor))
        if set(names) - set(features):  # bottom-up stages (res2..res5) matched too
            features.update(model.backbone.bottom_up(images.tensor))
    return {n: features[n][0].float().cpu() for n in names}


def _shown_image(image_file: str, resize: T.Augmentation) -> torch.Tensor:
    """``image_file`` as RGB uint8 [H, W, 3], resized by ``resize``."""
    image = read_image(image_file, format="RGB")
    return torch.from_numpy(np.array(resize.get_transform(image).apply_image(image)))  # a copy


def detection_selectivity(cfg, before: str, after: str, image_index: int = 0,
                          image_file: str = "") -> DetectionSelectivity:
    """Features and MMD^2 of every matched level (:func:`matched_features`) of the teacher
    (DISTILL.TEACHER.CONFIG / WEIGHTS, :func:`~nst_det.detection.teacher.build_teacher`), of the
    student with the ``before`` weights (the student trained alone; "init" = random) and of the
    student with the ``after`` weights (the NST student), for one image
    (:func:`selectivity_image_file`), on MODEL.DEVICE. Student and teacher levels of different
    spatial sizes are a ValueError naming both levels and shapes."""
    check_device(cfg.MODEL.DEVICE)
    image_file = selectivity_image_file(cfg, image_index, image_file)
    models = {"student alone": build_student_with_weights(cfg, before, "the student alone"),
              "student + NST": build_student_with_weights(cfg, after, "the NST student")}
    teacher = build_teacher(cfg)
    pairs = matched_features(cfg, models["student + NST"], teacher)
    resize = _test_resize(cfg)
    teacher_features = backbone_features(teacher, image_file, resize, [t for _, t in pairs])
    student_features = {role: backbone_features(model, image_file, resize, [s for s, _ in pairs])
                        for role, model in models.items()}
    levels = []
    for s_name, t_name in pairs:
        t = teacher_features[t_name]
        before_level = student_features["student alone"][s_name]
        after_level = student_features["student + NST"][s_name]
        if before_level.shape[1:] != t.shape[1:]:
            raise ValueError(
                f"student level '{s_name}' is {tuple(before_level.shape)} but teacher level "
                f"'{t_name}' is {tuple(t.shape)} for image '{image_file}': matched levels need "
                f"the same spatial size (DISTILL.STUDENT_FEATURES / DISTILL.TEACHER_FEATURES)")
        levels.append(LevelSelectivity(
            s_name, t_name, t, before_level, after_level,
            mmd2_to_teacher(before_level, t, cfg.DISTILL.NST),
            mmd2_to_teacher(after_level, t, cfg.DISTILL.NST)))
    return DetectionSelectivity(image_file, _shown_image(image_file, resize), levels)


def save_detection_selectivity_figure(cfg, result: DetectionSelectivity, path: str,
                                      top_k: int = 8) -> str:
    """PNG at ``path`` of what :func:`detection_selectivity` computed for ``cfg``: for every
    matched level a block of three rows (teacher / student alone / student + NST), the image first,
    then each network's ``top_k`` most selective normalised channel maps of that level; each
    student row with its MMD^2 to the teacher (DISTILL.NST's kernel). Returns ``path``."""
    kernel = kernel_text(cfg.DISTILL.NST)
    rows = []
    for level in result.levels:
        rows.append(SelectivityRow(f"teacher {level.teacher_feature}\n"
                                   f"[C, H, W] {list(level.teacher.shape)}",
                                   normalised_maps(level.teacher)))
        for title, feats, mmd2 in (("student alone", level.before, level.mmd2_before),
                                   ("student + NST", level.after, level.mmd2_after)):
            rows.append(SelectivityRow(f"{title} {level.student_feature}\n"
                                       f"MMD² to teacher {mmd2:.4f}\n({kernel})",
                                       normalised_maps(feats)))
    names = ", ".join(level.student_feature if level.student_feature == level.teacher_feature
                      else f"{level.student_feature}/{level.teacher_feature}"
                      for level in result.levels)
    height, width = result.image.shape[:2]
    title = (f"L2-normalised channel maps, most selective first\n"
             f"image {os.path.basename(result.image_file)} ({height}×{width} after the test "
             f"resize); levels {names}")
    return save_selectivity_grid(path, result.image, rows, top_k, title, row_height=1.7)
