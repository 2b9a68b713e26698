"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017)."""
import torch
import torch.nn.functional as F
from torch import nn

from nst_det.losses.feature_pair import check_feature_pair, check_loss_finite

__all__ = ["attention_map", "at_loss", "ATLoss"]


def attention_map(features, p=2):
    """Activation-based spatial attention: [N, C, H, W] -> [N, H*W], Q = mean_c |A_c|^p, flattened,
    divided by its L2 norm (F.normalize, eps 1e-12)."""
    powered = features.square() if p == 2 else features.abs().pow(p)
    return F.normalize(powered.mean(1).flatten(1), dim=1)


def at_loss(student, teacher, p=2):
    """AT loss: mean over the batch and the H*W positions of (Q_S / ||Q_S||_2 - Q_T / ||Q_T||_2)^2.

    student: [N, C_S, H, W], teacher: [N, C_T, H, W] (C_S and C_T may differ) -> scalar tensor;
    Q = attention_map(., p). The paper writes (beta / 2) sum_j ||Q_S^j/||Q_S^j|| - Q_T^j/||Q_T^j|| ||_2
    per tap; its official code uses this squared, mean-reduced form with beta = 1000, which is what
    is computed here (the weight is left to ATLoss). The teacher is detached; computed in at least
    float32; different H, W raise ValueError.
    """
    check_feature_pair("at_loss", student, teacher)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"at_loss: p must be a positive number, got {p!r}")
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    q_s = attention_map(student.to(dtype), p)
    q_t = attention_map(teacher.detach().to(dtype), p)
    loss = (q_s - q_t).square().mean()
    check_loss_finite("at_loss", loss, student=student, teacher=teacher)
    return loss


class ATLoss(nn.Module):
    """weight * at_loss(student [N, C_S, H, W], teacher [N, C_T, H, W], p); the paper's beta/2 is the weight."""

    def __init__(self, weight=1.0, p=2):
        super().__init__()
        self.weight = float(weight)
        self.p = p

    def forward(self, student, teacher):
        """[N, C_S, H, W], [N, C_T, H, W] -> weighted scalar loss."""
        return self.weight * at_loss(student, teacher, self.p)

    def extra_repr(self):
        return f"weight={self.weight}, p={self.p}"
