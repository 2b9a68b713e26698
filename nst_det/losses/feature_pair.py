"""Input checks shared by the feature-map and logit losses: shapes of a student/teacher pair, and
naming the input that makes a loss non-finite."""
import logging

import torch

__all__ = ["check_feature_pair", "check_loss_finite", "loss_or_nan", "NonFiniteInputError"]

logger = logging.getLogger(__name__)


class NonFiniteInputError(ValueError):
    """A loss came out NaN or infinite; the message names the input that holds NaN/inf."""


def _shape(x):
    return tuple(x.shape)


def check_feature_pair(loss_name, student, teacher, same_size=True, hint=""):
    """Raise unless student [N, C_S, H, W] and teacher [N, C_T, H, W] are non-empty 4-D tensors that
    share N (and H, W when `same_size`); `hint` is appended to the spatial-mismatch message."""
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{loss_name}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{loss_name}: {name} must be a 4-D feature map [N, C, H, W], got shape {_shape(x)} "
                f"(student {_shape(student)}, teacher {_shape(teacher)})"
            )
        if x.numel() == 0:
            raise ValueError(f"{loss_name}: {name} feature map {_shape(x)} is empty")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss_name}: batch sizes differ: student {_shape(student)} vs teacher {_shape(teacher)}"
        )
    if same_size and student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"{loss_name}: spatial sizes differ: student {_shape(student)} vs teacher "
            f"{_shape(teacher)}{hint}"
        )


def check_loss_finite(loss_name, loss, **inputs):
    """Raise ValueError naming the first of `inputs` holding NaN/inf when the scalar `loss` is
    non-finite; a finite loss costs one scalar check, the inputs are scanned only on failure."""
    if bool(torch.isfinite(loss)):
        return
    for name, x in inputs.items():
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteInputError(f"{loss_name}: {name} {_shape(x)} contains NaN or inf")
    raise NonFiniteInputError(
        f"{loss_name}: the loss is {loss.item()} although its inputs are finite "
        f"(values too large for {loss.dtype}?)"
    )


def loss_or_nan(compute, like: torch.Tensor, context: str = "") -> torch.Tensor:
    """``compute()``; when a loss finds a NaN/inf input (:class:`NonFiniteInputError`), the error is
    logged (with ``context``) and a NaN on ``like``'s graph is returned instead of raising.

    Not raised here: under DistributedDataParallel the other processes would wait for this one in
    the backward pass. A NaN term lets every process finish the step; the training loop's check
    (nst_det.engine.train_loop.check_losses_finite) then stops all of them, naming the term and
    the rank."""
    try:
        return compute()
    except NonFiniteInputError as e:
        logger.error(f"{e}{context}")
        return like.sum() * float("nan")
