"""The training loop both stages run on: Detectron2's ``SimpleTrainer`` with its ``run_step``
written out (public API only), and the pieces both stages add to Detectron2's engine:

- :class:`TrainLoop` -- one optimizer step per batch (optionally with ``torch.amp`` autocast and a
  grad scaler); before the optimizer step it stops, on every process at the same iteration, at a
  loss term that is not finite (:func:`check_losses_finite`), so the last checkpoint holds the
  last good weights;
- :class:`ResumableTrainer` -- a mixin for a ``TrainerBase`` that drives a TrainLoop: the loop's
  state (optimizer, grad scaler) in the checkpoint, and ``--resume`` that continues the data
  stream (a loader with ``start_at(iteration)``) and, with :class:`RNGCheckpointHook`, the random
  state of every process, so a resumed run repeats the uninterrupted one;
- :func:`preserved_rng` -- evaluation that leaves the training's random state where it was.
"""
import contextlib
import inspect
import logging
import math
import random
import time
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from nst_det.engine.precision import autocast, needs_grad_scaler

__all__ = ["NonFiniteLossError", "check_losses_finite", "rng_state", "set_rng_state",
           "preserved_rng", "TrainLoop", "RNGCheckpointHook", "ResumableTrainer",
           "OtherTeacherError"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or infinite; the message names it, the iteration and the rank."""


def check_losses_finite(loss_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming every loss term that is NaN or infinite on any
    process, with the iteration and the rank.

    Every process takes part (one all_gather when distributed), so all of them stop at the same
    iteration. One device sync for all terms.
    """
    names = list(loss_dict)
    values = torch.stack([torch.as_tensor(loss_dict[n]).detach().float().sum().cpu()
                          for n in names]).tolist()
    bad = {n: v for n, v in zip(names, values) if not math.isfinite(v)}
    per_rank = comm.all_gather(bad) if comm.get_world_size() > 1 else [bad]
    if not any(per_rank):
        return
    terms = "; ".join(", ".join(f"{n} = {v}" for n, v in rank_bad.items()) + f" (rank {rank})"
                      for rank, rank_bad in enumerate(per_rank) if rank_bad)
    raise NonFiniteLossError(
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


@contextlib.contextmanager
def preserved_rng():
    """Run the block, then put every global generator back where it was (evaluation in the middle
    of training then draws nothing from the training's random stream)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# Detectron2 after v0.6 asks write_metrics for the iteration (``cur_iter``); v0.6 has no such
# argument (its third one is ``prefix``).
_WRITE_METRICS_TAKES_ITER = "cur_iter" in inspect.signature(SimpleTrainer.write_metrics).parameters


class TrainLoop(SimpleTrainer):
    """SimpleTrainer (or, with ``amp_dtype``, the AMPTrainer step on any device type, in float16 or
    bfloat16) whose step stops at a non-finite loss term before the optimizer step, naming the
    term, the iteration and the rank.

    ``model(batch)`` returns the dict of loss terms. The data stream is made at the first step,
    so a loader's ``start_at(iteration)`` called by ``--resume`` before training still applies.
    """

    def __init__(self, model, data_loader, optimizer, *, amp_dtype: Optional[torch.dtype] = None,
                 grad_scaler=None, device_type: str = "cuda"):
        """``amp_dtype``: the step under ``torch.autocast(device_type, amp_dtype)`` (None: float32,
        no autocast), with a grad scaler (``grad_scaler``, or a new one) for float16 only."""
        super().__init__(model, data_loader, optimizer)
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        if grad_scaler is None and needs_grad_scaler(self.amp_dtype):
            grad_scaler = torch.amp.GradScaler(device_type)
        self.grad_scaler = grad_scaler
        self.data_stream: Optional[Iterator] = None
        if self.amp_dtype is not None:
            logger.info(f"Mixed precision: the training step runs under torch.autocast on "
                        f"{device_type} in {self.amp_dtype}, "
                        + ("with a grad scaler" if grad_scaler is not None else "no grad scaler"))

    def run_step(self):
        assert self.model.training, "[TrainLoop] model was changed to eval mode!"
        start = time.perf_counter()
        if self.data_stream is None:
            self.data_stream = iter(self.data_loader)
        data = next(self.data_stream)
        data_time = time.perf_counter() - start

        with autocast(self.amp_dtype, self.device_type) if self.amp_dtype is not None \
                else contextlib.nullcontext():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        check_losses_finite(loss_dict, self.iter)
        if _WRITE_METRICS_TAKES_ITER:
            SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter=self.iter)
        else:
            SimpleTrainer.write_metrics(loss_dict, data_time)
        if len(loss_dict) == 1 and comm.is_main_process():
            # Detectron2 writes a single term only as total_loss: write it by its name too.
            ((name, _),) = loss_dict.items()
            if name != "total_loss":
                storage = get_event_storage()
                storage.put_scalar(name, storage.history("total_loss").latest())
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class RNGCheckpointHook(HookBase):
    """Keeps, for the checkpoint of the iterations where one is written (every ``period``
    iterations and the last), the random state of every process; loading it restores this
    process's state when the world size is the one that wrote it.

    Register it on every process (it gathers from all of them), before the checkpointer's hook.
    """

    def __init__(self, period: int, max_iter: int):
        self.period = int(period)
        self.max_iter = int(max_iter)
        self.per_rank = []

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if (self.period > 0 and next_iter % self.period == 0) or next_iter >= self.max_iter:
            state = rng_state()
            self.per_rank = comm.all_gather(state) if comm.get_world_size() > 1 else [state]

    def state_dict(self):
        return {"per_rank": self.per_rank}

    def load_state_dict(self, state_dict):
        per_rank = state_dict.get("per_rank", [])
        if len(per_rank) == comm.get_world_size():
            set_rng_state(per_rank[comm.get_rank()])
        elif per_rank:
            logger.warning(f"checkpoint was written by {len(per_rank)} processes, this run has "
                           f"{comm.get_world_size()}: random states not restored, the resumed run "
                           f"will not repeat the uninterrupted one exactly")


class OtherTeacherError(ValueError):
    """--resume with teacher weights other than those the checkpoint was trained with."""


class ResumableTrainer:
    """Mixin for a ``TrainerBase`` subclass holding ``self._trainer`` (a :class:`TrainLoop`),
    ``self.checkpointer`` (a :class:`nst_det.engine.checkpointer.AtomicCheckpointer` with the
    trainer among its checkpointables), ``self.cfg`` and ``self.start_iter``.

    The checkpoint records the teacher's weights (DISTILL.TEACHER.WEIGHTS and its SHA-256, from
    :meth:`teacher_weights_file`); ``--resume`` with another file is an :class:`OtherTeacherError`
    naming both hashes, unless DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME (then a warning). A checkpoint
    written before this record existed resumes with a warning."""

    _TEACHER_KEY = "DISTILL.TEACHER.WEIGHTS"

    def teacher_weights_file(self) -> str:
        """The teacher's weights file when this run distils from a teacher, "" otherwise."""
        return ""

    def _teacher_record(self) -> Optional[dict]:
        path = self.teacher_weights_file()
        if not path:
            return None
        if getattr(self, "_teacher_record_cache", (None,))[0] != path:
            from nst_det.engine.checkpointer import weights_checksum

            self._teacher_record_cache = (path, {"weights": path,
                                                 "sha256": weights_checksum(path)})
        return self._teacher_record_cache[1]

    def _check_teacher(self, saved: Optional[dict]) -> None:
        current = self._teacher_record()
        if current is None:
            return
        if not saved:
            logger.warning(
                f"--resume: the checkpoint has no record of its teacher's weights (written before "
                f"nst_det kept one): cannot check that {self._TEACHER_KEY} '{current['weights']}' "
                f"(sha256 {current['sha256']}) is the teacher it was trained with")
            return
        if saved["sha256"] == current["sha256"]:
            return
        message = (f"--resume with another teacher: the checkpoint was trained with teacher "
                   f"weights sha256 {saved['sha256']} ('{saved['weights']}'), but "
                   f"{self._TEACHER_KEY} '{current['weights']}' has sha256 {current['sha256']}")
        if self.cfg.DISTILL.TEACHER.get("ALLOW_OTHER_ON_RESUME", False):
            logger.warning(f"{message}; going on with it (DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME)")
            return
        raise OtherTeacherError(f"{message}. Give the checkpoint's teacher file, or set "
                                f"DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME True to go on with this "
                                f"one")

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self):
        # Detectron2 v0.6's DefaultTrainer saves only the iteration and the hooks: the optimizer
        # (its momentum and the current lr) would start afresh on --resume. Save it as later
        # Detectron2 versions do.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        teacher = self._teacher_record()
        if teacher is not None:
            ret["teacher"] = dict(teacher)
        return ret

    def load_state_dict(self, state_dict):
        self._check_teacher(state_dict.get("teacher"))
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # (later Detectron2 versions load it already: harmless)
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load_weights(self, weights: str, resume: bool = True):
        """Load ``weights`` or, with ``resume``, the newest readable checkpoint of the checkpointer's
        folder, then continue its data stream."""
        self.checkpointer.resume_or_load(weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint stores the iteration that just finished: start at the next one.
            self.start_iter = self.iter + 1
            start_at = getattr(self._trainer.data_loader, "start_at", None)
            if start_at is not None:
                start_at(self.start_iter)
