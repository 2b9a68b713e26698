"""FitNets hint learning (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015)."""
import torch
import torch.nn.functional as F
from torch import nn

from nst_det.losses.feature_pair import check_feature_pair, check_loss_finite

__all__ = ["fitnet_loss", "FitNetLoss"]


def fitnet_loss(regressed_student, teacher):
    """Hint loss: mean over all elements of (r(v) - u)^2 for the regressed student r(v) and the hint u.

    regressed_student, teacher: [N, C_T, H, W] -> scalar tensor. The paper's L_HT = 1/2 ||u - r(v)||^2
    summed over elements; the mean used here differs by a constant left to the weight. The teacher
    is detached; computed in at least float32.
    """
    check_feature_pair("fitnet_loss", regressed_student, teacher)
    if regressed_student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"fitnet_loss: regressed student {tuple(regressed_student.shape)} and teacher "
            f"{tuple(teacher.shape)} differ in channels"
        )
    dtype = torch.promote_types(torch.promote_types(regressed_student.dtype, teacher.dtype), torch.float32)
    loss = F.mse_loss(regressed_student.to(dtype), teacher.detach().to(dtype))
    check_loss_finite("fitnet_loss", loss, regressed_student=regressed_student, teacher=teacher)
    return loss


class FitNetLoss(nn.Module):
    """weight * fitnet_loss(regressor(student [N, C_S, H, W]), teacher [N, C_T, H, W]).

    The regressor r is a learned 1x1 convolution C_S -> C_T (followed by BatchNorm when use_bn), so
    its parameters belong to this module and must be given to the optimiser with the student's.
    """

    def __init__(self, student_channels, teacher_channels, weight=1.0, use_bn=False):
        super().__init__()
        self.student_channels, self.teacher_channels = int(student_channels), int(teacher_channels)
        self.weight = float(weight)
        layers = [nn.Conv2d(self.student_channels, self.teacher_channels, 1, bias=not use_bn)]
        if use_bn:
            layers.append(nn.BatchNorm2d(self.teacher_channels))
        self.regressor = nn.Sequential(*layers)

    def forward(self, student, teacher):
        """[N, C_S, H, W], [N, C_T, H, W] -> weighted scalar loss."""
        check_feature_pair("FitNetLoss", student, teacher)
        if student.shape[1] != self.student_channels or teacher.shape[1] != self.teacher_channels:
            raise ValueError(
                f"FitNetLoss: expects student [N, {self.student_channels}, H, W] and teacher "
                f"[N, {self.teacher_channels}, H, W], got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        return self.weight * fitnet_loss(self.regressor(student), teacher)

    def extra_repr(self):
        return f"weight={self.weight}"
