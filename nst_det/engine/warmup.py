"""The distillation warm-up of both stages: every distillation weight grows linearly from 1 / N at
iteration 0 to its full value at iteration N - 1 (N = DISTILL.WARMUP_ITERS)."""
from typing import Optional

from detectron2.utils.events import get_event_storage

__all__ = ["current_iteration", "warmup_factor"]


def current_iteration() -> Optional[int]:
    """The trainer's iteration from Detectron2's event storage; None outside a training loop."""
    try:
        return get_event_storage().iter
    except AssertionError:  # no EventStorage is active
        return None


def warmup_factor(iteration: Optional[int], warmup_iters: int) -> float:
    """min(1, (iteration + 1) / warmup_iters): the factor of the distillation weights at
    ``iteration`` (0-based); 1 when warm-up is off or outside a training loop (None)."""
    if warmup_iters <= 0 or iteration is None:
        return 1.0
    return min(1.0, (iteration + 1) / warmup_iters)
