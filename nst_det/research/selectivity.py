"""Pictures of neuron selectivity, the parts both stages share: a network's L2-normalised channel
maps, the channels ranked by how selective they are, the MMD^2 of a student's maps to a teacher's
under a config's NST kernel, and one PNG grid of maps (a row per network, the image first).

NST treats each channel's spatial map, L2-normalised over the positions, as one sample of the
network's "selectivity" distribution. ``selective_channels`` ranks channels by the peak of that
normalised map (a map that fires at a few positions has a high peak; a flat one has 1/sqrt(HW)).
The classification stage (:mod:`nst_det.research.selectivity_cls`) draws one tapped layer, the
detection stage (:mod:`nst_det.research.selectivity_det`) every matched backbone level.

Needs torch, matplotlib and :mod:`nst_det.losses` only.
"""
import os
from typing import NamedTuple, Sequence

import torch

from nst_det.engine.atomic import atomic_save_figure
from nst_det.engine.distill_config import nst_loss_kwargs
from nst_det.losses import nst_loss
from nst_det.losses.nst import normalise_maps

__all__ = ["SelectivityRow", "normalised_maps", "selective_channels", "mmd2_to_teacher",
           "kernel_text", "save_selectivity_grid"]


class SelectivityRow(NamedTuple):
    """One row of a selectivity grid: ``label`` (written under the image in the first column) and
    the network's normalised channel maps ``maps`` [C, H, W], drawn most selective first."""

    label: str
    maps: torch.Tensor


def normalised_maps(features: torch.Tensor) -> torch.Tensor:
    """features [C, H, W] -> each channel's map divided by its spatial L2 norm, [C, H, W] float32
    (the samples NST compares, as :func:`nst_det.losses.nst.normalise_maps` makes them)."""
    return normalise_maps(features.float()[None])[0].view(features.shape)


def selective_channels(maps: torch.Tensor, k: int) -> torch.Tensor:
    """maps [C, H, W] (normalised) -> indices of the ``k`` channels with the highest peak, [k]
    (all C when C < k)."""
    peaks = maps.flatten(1).amax(dim=1)
    return peaks.topk(min(k, maps.shape[0])).indices


def mmd2_to_teacher(student: torch.Tensor, teacher: torch.Tensor, nst) -> float:
    """The NST loss (MMD^2) of one image's student features [C_S, H, W] to the teacher's
    [C_T, H, W] with the kernel of ``nst`` (a config's DISTILL.NST: KERNEL, DEGREE, COEF, SIGMA2;
    SIGMA2 <= 0 = the data-driven bandwidth)."""
    return nst_loss(student[None], teacher[None], **nst_loss_kwargs(nst)).item()


def kernel_text(nst) -> str:
    """The kernel of ``nst`` (DISTILL.NST) in a few words, e.g. "poly d=2 c=0"."""
    if nst.KERNEL == "poly":
        return f"poly d={nst.DEGREE} c={nst.COEF:g}"
    if nst.KERNEL == "gaussian":
        return f"gaussian σ²={nst.SIGMA2:g}" if nst.SIGMA2 > 0 else "gaussian σ² from data"
    return nst.KERNEL


def save_selectivity_grid(path: str, image: torch.Tensor, rows: Sequence[SelectivityRow],
                          top_k: int, title: str, row_height: float = 1.9) -> str:
    """PNG at ``path``: one row per entry of ``rows``, the ``image`` [H, W, 3] (any range: scaled
    to [0, 1] for display; RGB) in the first column with the row's label, then the ``top_k`` most
    selective of the row's normalised maps, each titled with its channel and peak; ``title`` (one
    or more lines) above all. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError(f"no rows of channel maps to draw in '{path}'")
    shown = image.float()
    shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
    fig, axes = plt.subplots(len(rows), top_k + 1,
                             figsize=(1.3 * (top_k + 1), row_height * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(shown.numpy())
        axes[r, 0].set_title(row.label, fontsize=6)
        for c, channel in enumerate(selective_channels(row.maps, top_k).tolist()):
            ax = axes[r, c + 1]
            ax.imshow(row.maps[channel].numpy(), cmap="viridis", vmin=0)
            ax.set_title(f"ch {channel}, peak {row.maps[channel].max():.2f}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[r, 1 + min(top_k, row.maps.shape[0]):]:
            ax.axis("off")  # fewer channels than top_k: blank cells
    fig.suptitle(title, fontsize=8)
    # leave the title its lines above the grid (a tall figure's tight layout would not)
    title_inches = 0.17 * (title.count("\n") + 1) + 0.1
    fig.tight_layout(rect=(0, 0, 1, 1 - title_inches / fig.get_figheight()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path
