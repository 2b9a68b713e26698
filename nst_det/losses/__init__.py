"""Distillation losses shared by the classification and detection stages: NST (the paper's),
and the baselines it is compared with: KD, AT and FitNet."""
from nst_det.losses.at import ATLoss, at_loss
from nst_det.losses.feature_pair import NonFiniteInputError, loss_or_nan
from nst_det.losses.fitnet import FitNetLoss, fitnet_loss
from nst_det.losses.kd import KDLoss, binary_kd_loss, kd_loss
from nst_det.losses.nst import NSTLoss, nst_loss

__all__ = ["nst_loss", "NSTLoss", "kd_loss", "binary_kd_loss", "KDLoss", "at_loss", "ATLoss", "fitnet_loss", "FitNetLoss",
           "loss_or_nan", "NonFiniteInputError"]
