"""The inner loop of DistillTrainer: Detectron2's SimpleTrainer/AMPTrainer that

- stop, before the optimizer step, at a loss term that is not finite, with an error naming the
  term and the iteration (the last checkpoint then holds the last good weights);
- continue, after ``--resume``, the data stream and the random state where the checkpoint left
  them, so a resumed run repeats the uninterrupted one (exactly on one process with
  DATALOADER.NUM_WORKERS 0 and one aspect-ratio group; see
  nst_det.detection.data.build.ResumableTrainLoader, a loader with ``start_at(iteration)``).
"""
import math
import random
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm


__all__ = ["check_losses_finite", "rng_state", "set_rng_state", "TrainLoop", "AMPTrainLoop",
           "as_train_loop"]


def check_losses_finite(loss_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    """Raise FloatingPointError naming every loss term that is NaN or infinite on any process.

    Every process takes part (one all_gather when distributed), so all of them stop at the same
    iteration. One device sync for all terms.
    """
    names = list(loss_dict)
    values = torch.stack([loss_dict[n].detach().float().sum() for n in names]).cpu().tolist()
    bad = {n: v for n, v in zip(names, values) if not math.isfinite(v)}
    per_rank = comm.all_gather(bad) if comm.get_world_size() > 1 else [bad]
    if not any(per_rank):
        return
    terms = "; ".join(", ".join(f"{n} = {v}" for n, v in rank_bad.items()) + f" (rank {rank})"
                      for rank, rank_bad in enumerate(per_rank) if rank_bad)
    raise FloatingPointError(
        f"non-finite loss at iteration {iteration}: {terms}. Training stopped before the "
        f"optimizer step: the last checkpoint holds the last good weights. All terms on this "
        f"process: {dict(zip(names, values))}")


def rng_state() -> dict:
    """The states of Python's, numpy's and torch's global generators (only plain types and
    tensors, so ``torch.load(weights_only=True)`` reads them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _then(iterator: Iterator, after_first) -> Iterator:
    """``iterator``, calling ``after_first()`` right after its first item is produced."""
    first = next(iterator)
    after_first()
    yield first
    yield from iterator


class _FiniteLossCheck:
    """Check the loss terms after the backward pass and before the optimizer step."""

    def _write_metrics(self, loss_dict, *args, **kwargs):
        check_losses_finite(loss_dict, self.iter)
        super()._write_metrics(loss_dict, *args, **kwargs)


class _ResumableData:
    """Save the random state with the checkpoint; restart the data iterator where it left off."""

    _resumed_rng: Optional[dict] = None

    def state_dict(self):
        ret = super().state_dict()
        ret["rng"] = rng_state()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._resumed_rng = state_dict.get("rng")

    def resume_data(self, start_iter: int) -> None:
        """Continue the data stream at iteration ``start_iter`` and, on one process, the random
        state of the checkpoint just loaded."""
        rng = self._resumed_rng
        if hasattr(self.data_loader, "start_at"):  # a loader that can begin at an iteration
            self.data_loader.start_at(start_iter)
        iterator = iter(self.data_loader)
        if rng is not None and comm.get_world_size() == 1:
            set_rng_state(rng)
            # The loader's first batch makes its worker iterator, which draws one number from
            # torch's generator; the uninterrupted run drew it at iteration 0, not now.
            iterator = _then(iterator, lambda: torch.set_rng_state(rng["torch"]))
        if isinstance(getattr(type(self), "_data_loader_iter", None), property):
            self._data_loader_iter_obj = iterator  # Detectron2 > 0.6 makes it lazily
        else:
            self._data_loader_iter = iterator


class TrainLoop(_FiniteLossCheck, _ResumableData, SimpleTrainer):
    """SimpleTrainer that stops at a non-finite loss term and resumes its data stream."""


class AMPTrainLoop(_FiniteLossCheck, _ResumableData, AMPTrainer):
    """AMPTrainer that stops at a non-finite loss term and resumes its data stream."""


def as_train_loop(trainer: SimpleTrainer) -> SimpleTrainer:
    """The same model, data loader and optimizer (and grad scaler) in a TrainLoop/AMPTrainLoop;
    ``trainer`` itself when it is one."""
    if isinstance(trainer, (TrainLoop, AMPTrainLoop)):
        return trainer
    if isinstance(trainer, AMPTrainer):
        return AMPTrainLoop(trainer.model, trainer.data_loader, trainer.optimizer,
                            grad_scaler=trainer.grad_scaler)
    return TrainLoop(trainer.model, trainer.data_loader, trainer.optimizer)
