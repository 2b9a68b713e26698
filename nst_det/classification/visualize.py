"""Pictures of neuron selectivity: a network's L2-normalised channel maps for one image.

NST treats each channel's spatial map, L2-normalised over the positions, as one sample of the
network's "selectivity" distribution. ``selective_channels`` ranks channels by the peak of that
normalised map (a map that fires at a few positions has a high peak; a flat one has 1/sqrt(HW));
``save_selectivity_figure`` draws, for one validation image, the most selective channels of the
teacher and of the student before and after distillation, with the NST loss (poly MMD^2) of each
student to the teacher.
"""
import os

import torch

from nst_det.losses.nst import normalise_maps

__all__ = ["normalised_maps", "selective_channels", "selectivity_rows", "save_selectivity_figure"]


def normalised_maps(features: torch.Tensor) -> torch.Tensor:
    """features [C, H, W] -> each channel's map divided by its spatial L2 norm, [C, H, W]."""
    return normalise_maps(features.float()[None])[0].view_as(features)


def selective_channels(maps: torch.Tensor, k: int) -> torch.Tensor:
    """maps [C, H, W] (normalised) -> indices of the ``k`` channels with the highest peak, [k]."""
    peaks = maps.flatten(1).amax(dim=1)
    return peaks.topk(min(k, maps.shape[0])).indices


def _tapped(cfg, role, weights, image):
    """One feature map [C, H, W] of the ``role`` network ("student" or "teacher") with ``weights``
    for ``image``."""
    from nst_det.classification.distill import build_role_net, tap_layers
    from nst_det.classification.taps import FeatureTaps

    if role == "student" and weights and not os.path.isfile(weights):
        # the student's come as arguments; the teacher's key is named by the loader
        raise FileNotFoundError(f"student weights file '{weights}' does not exist")
    torch.manual_seed(0)  # "init": the same random initialisation every time
    net = build_role_net(cfg, role, weights if role == "student" else None).eval()
    layer = tap_layers(cfg, role)[0]
    with torch.no_grad():
        _, feats = FeatureTaps(net, [layer])(image[None])
    return feats[layer][0], layer


def selectivity_rows(cfg, before: str, after: str, image: torch.Tensor):
    """[(title, normalised maps [C, H, W], raw features [C, H, W])] for the teacher, the student
    ``before`` and ``after`` distillation (checkpoint paths; "" or "init" = random init)."""
    rows = []
    for title, role, weights in (("teacher", "teacher", None),
                                 ("student before", "student", "" if before == "init" else before),
                                 ("student after", "student", after)):
        feats, layer = _tapped(cfg, role, weights, image)
        name = cfg.DISTILL.TEACHER.NAME if role == "teacher" else cfg.MODEL.STUDENT.NAME
        rows.append((f"{title}\n{name}:{layer}", normalised_maps(feats), feats))
    return rows


def save_selectivity_figure(config_file: str, opts, before: str, after: str, path: str,
                            image_index: int = 0, top_k: int = 8) -> str:
    """PNG at ``path``: validation image ``image_index`` of the config's data set and the ``top_k``
    most selective normalised channel maps of teacher / student before / student after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nst_det.classification.config import load_cls_config
    from nst_det.classification.data import build_cls_dataset
    from nst_det.losses import nst_loss

    cfg = load_cls_config(config_file, opts)
    val = build_cls_dataset(cfg, train=False)
    if not 0 <= image_index < len(val):
        raise IndexError(f"image index {image_index} is outside the validation set of {len(val)}")
    image, label = val[image_index]
    rows = selectivity_rows(cfg, before, after, image)
    teacher_feats = rows[0][2]

    fig, axes = plt.subplots(len(rows), top_k + 1, figsize=(1.3 * (top_k + 1), 1.9 * len(rows)),
                             squeeze=False)
    shown = image.permute(1, 2, 0).float()
    shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
    for r, (title, maps, feats) in enumerate(rows):
        axes[r, 0].imshow(shown.numpy())
        label_text = title
        if r > 0:
            mmd2 = nst_loss(feats[None], teacher_feats[None], kernel="poly").item()
            label_text += f"\nNST MMD² to teacher {mmd2:.3f}"
        axes[r, 0].set_title(label_text, fontsize=6)
        for c, channel in enumerate(selective_channels(maps, top_k).tolist()):
            ax = axes[r, c + 1]
            ax.imshow(maps[channel].numpy(), cmap="viridis", vmin=0)
            ax.set_title(f"ch {channel}, peak {maps[channel].max():.2f}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"L2-normalised channel maps, most selective first (val image {image_index}, "
                 f"label {label})", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
