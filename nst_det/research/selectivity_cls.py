"""Pictures of neuron selectivity of the classification stage: for one validation image, the most
selective L2-normalised channel maps of the teacher's and the student's tapped layer, the student
before and after distillation, with the NST loss (MMD^2, the config's kernel) of each student to
the teacher. The stage-independent parts (normalising, ranking, drawing) are
:mod:`nst_det.research.selectivity`.
"""
import os

import torch

from nst_det.engine.device import check_device
from nst_det.research.selectivity import (
    SelectivityRow,
    kernel_text,
    mmd2_to_teacher,
    normalised_maps,
    save_selectivity_grid,
    selective_channels,
)

__all__ = ["normalised_maps", "selective_channels", "selectivity_rows", "save_selectivity_figure"]


def _tapped(cfg, role, weights, image, device=torch.device("cpu")):
    """(features [C, H, W] on the CPU, layer name) of the ``role`` network ("student" or "teacher")
    with ``weights`` for ``image`` [3, H, W], run on ``device``."""
    from nst_det.classification.distill import build_role_net, tap_layers
    from nst_det.classification.taps import FeatureTaps

    if role == "student" and weights and not os.path.isfile(weights):
        # the student's come as arguments; the teacher's key is named by the loader
        raise FileNotFoundError(f"student weights file '{weights}' does not exist")
    torch.manual_seed(0)  # "init": the same random initialisation every time
    net = build_role_net(cfg, role, weights if role == "student" else None).to(device).eval()
    layer = tap_layers(cfg, role)[0]
    with torch.no_grad():
        _, feats = FeatureTaps(net, [layer])(image[None].to(device))
    return feats[layer][0].cpu(), layer


def selectivity_rows(cfg, before: str, after: str, image: torch.Tensor):
    """[(title, normalised maps [C, H, W], raw features [C, H, W])] for the teacher, the student
    ``before`` and ``after`` distillation (checkpoint paths; "" or "init" = random init), run on
    the config's MODEL.DEVICE."""
    device = check_device(cfg.MODEL.DEVICE)
    rows = []
    for title, role, weights in (("teacher", "teacher", None),
                                 ("student before", "student", "" if before == "init" else before),
                                 ("student after", "student", after)):
        feats, layer = _tapped(cfg, role, weights, image, device)
        name = cfg.DISTILL.TEACHER.NAME if role == "teacher" else cfg.MODEL.STUDENT.NAME
        rows.append((f"{title}\n{name}:{layer}", normalised_maps(feats), feats))
    return rows


def save_selectivity_figure(config_file: str, opts, before: str, after: str, path: str,
                            image_index: int = 0, top_k: int = 8) -> str:
    """PNG at ``path``: validation image ``image_index`` of the config's data set and the ``top_k``
    most selective normalised channel maps of teacher / student before / student after, each
    student row with its MMD^2 to the teacher (DISTILL.NST's kernel)."""
    from nst_det.classification.config import load_cls_config
    from nst_det.classification.data import build_cls_dataset

    cfg = load_cls_config(config_file, opts)
    val = build_cls_dataset(cfg, train=False)
    if not 0 <= image_index < len(val):
        raise IndexError(f"image index {image_index} is outside the validation set of {len(val)}")
    image, label = val[image_index]
    rows = selectivity_rows(cfg, before, after, image)
    teacher_feats = rows[0][2]
    grid = [SelectivityRow(rows[0][0], rows[0][1])]
    for title, maps, feats in rows[1:]:
        mmd2 = mmd2_to_teacher(feats, teacher_feats, cfg.DISTILL.NST)
        grid.append(SelectivityRow(f"{title}\nNST MMD² to teacher {mmd2:.3f}\n"
                                   f"({kernel_text(cfg.DISTILL.NST)})", maps))
    return save_selectivity_grid(
        path, image.permute(1, 2, 0), grid, top_k,
        f"L2-normalised channel maps, most selective first (val image {image_index}, "
        f"label {label})")
