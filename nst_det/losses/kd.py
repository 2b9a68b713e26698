"""Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015)."""
import torch
import torch.nn.functional as F
from torch import nn

from nst_det.losses.feature_pair import check_loss_finite

__all__ = ["kd_loss", "binary_kd_loss", "KDLoss"]


def _check_logit_pair(loss_name, student_logits, teacher_logits, temperature):
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.numel() == 0:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{loss_name}: {name} must be a non-empty [N, K] tensor, got {shape}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{loss_name}: student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{loss_name}: temperature must be a positive number, got {temperature!r}")


def kd_loss(student_logits, teacher_logits, temperature=4.0):
    """KD loss: T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, mean over the batch.

    student_logits, teacher_logits: [N, K] -> scalar tensor. The T^2 factor keeps the gradient scale
    independent of T (Hinton et al.); the teacher is detached; computed in at least float32.
    """
    _check_logit_pair("kd_loss", student_logits, teacher_logits, temperature)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    loss = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
    check_loss_finite("kd_loss", loss, student_logits=student_logits, teacher_logits=teacher_logits)
    return loss


def binary_kd_loss(student_logits, teacher_logits, temperature=4.0):
    """KD for sigmoid classifiers (one-stage detectors: each of K classes is a yes/no question):
    T^2 * KL(Bernoulli(sigmoid(z_t / T)) || Bernoulli(sigmoid(z_s / T))), summed over the K
    classes, mean over the N anchors or locations.

    student_logits, teacher_logits: [N, K] -> scalar tensor; the teacher is detached; computed in at
    least float32. Zero when the logits agree, whatever they are.
    """
    _check_logit_pair("binary_kd_loss", student_logits, teacher_logits, temperature)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z_s = student_logits.to(dtype) / temperature
    z_t = teacher_logits.detach().to(dtype) / temperature
    p_t = torch.sigmoid(z_t)
    # KL(p_t || p_s) = BCE(z_s; p_t) - BCE(z_t; p_t): cross-entropy minus the teacher's entropy.
    kl = (F.binary_cross_entropy_with_logits(z_s, p_t, reduction="none")
          - F.binary_cross_entropy_with_logits(z_t, p_t, reduction="none"))
    loss = kl.sum(dim=1).mean() * temperature**2
    check_loss_finite("binary_kd_loss", loss, student_logits=student_logits,
                      teacher_logits=teacher_logits)
    return loss


class KDLoss(nn.Module):
    """weight * kd_loss(student_logits [N, K], teacher_logits [N, K]); the official NST code uses weight 16, T 4."""

    def __init__(self, weight=1.0, temperature=4.0):
        super().__init__()
        self.weight = float(weight)
        self.temperature = temperature

    def forward(self, student_logits, teacher_logits):
        """[N, K], [N, K] -> weighted scalar loss."""
        return self.weight * kd_loss(student_logits, teacher_logits, self.temperature)

    def extra_repr(self):
        return f"weight={self.weight}, temperature={self.temperature}"
