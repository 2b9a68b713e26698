"""The trainer of the classification stage (``tools/train_cls.py``): Detectron2's engine
(``TrainerBase`` and its hooks) with nst_det's shared training loop (nst_det.engine.train_loop).

``ClsTrainer(cfg)`` trains the student of :mod:`nst_det.classification.distill` with SGD (momentum,
optional Nesterov, weight decay). The config keeps epoch semantics -- SOLVER.EPOCHS, SOLVER.STEPS
and SOLVER.CHECKPOINT_PERIOD count epochs -- converted to iterations once, by
:func:`epoch_schedule`. Everything runs on ``MODEL.DEVICE`` (CUDA asked for on a machine without
one is an error, never a silent fall-back to the CPU). ``SOLVER.AMP`` trains the student under
autocast on any device, in the dtype of SOLVER.AMP_PRECISION (float16 on CUDA, bfloat16 on the CPU
by default), with a ``GradScaler`` for float16 only; the teacher runs in DISTILL.TEACHER.PRECISION
(nst_det.engine.precision; by default as the student's step). Under torch.distributed the
student is wrapped by ``DistributedDataParallel``; the frozen teacher is not. Only rank 0 writes
files (apart from Detectron2's log of each process, ``log.txt.rank<N>``, when
:func:`default_cls_setup` ran).

Hooks (Detectron2's): ``IterationTimer``, ``LRScheduler`` (the step schedule),
``PeriodicCheckpointer`` (atomic checkpoints every SOLVER.CHECKPOINT_PERIOD epochs and after the
last, with everything ``--resume`` needs to continue exactly), ``EvalHook`` (top-1/top-5 on the
validation set after each epoch) and ``PeriodicWriter`` (console with ETA, ``metrics.json``,
TensorBoard, every LOG_PERIOD iterations).
"""
import logging
import weakref
from typing import Iterator

import torch
from detectron2.config import CfgNode as D2CfgNode
from detectron2.engine import TrainerBase, hooks
from detectron2.engine.defaults import default_setup, default_writers
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nst_det.classification.data import build_cls_dataset, build_train_loader, build_val_loader
from nst_det.classification.distill import (build_distillation, distill_terms,
                                            distillation_losses, prepare_teacher, teacher_dtype)
from nst_det.engine.checkpointer import AtomicCheckpointer
from nst_det.engine.cpu_memory import keep_freed_memory
from nst_det.engine.device import check_device
from nst_det.engine.precision import amp_dtype, autocast, to_channels_last
from nst_det.engine.run_lock import hold_run_lock
from nst_det.engine.train_loop import RNGCheckpointHook, ResumableTrainer, TrainLoop, preserved_rng
from nst_det.engine.warmup import current_iteration, warmup_factor

__all__ = ["ClsTrainer", "default_cls_setup", "accuracy_counts", "epoch_schedule",
           "trainer_device", "student_amp_dtype", "EpochStream", "DistillStep"]

logger = logging.getLogger(__name__)


def epoch_schedule(cfg, iters_per_epoch: int) -> dict:
    """The config's epochs in iterations: ``max_iter`` (SOLVER.EPOCHS), ``steps`` (the learning-rate
    steps of SOLVER.STEPS that fall inside training) and ``checkpoint_period``
    (SOLVER.CHECKPOINT_PERIOD); the one place where epochs become iterations."""
    max_iter = cfg.SOLVER.EPOCHS * iters_per_epoch
    return {"max_iter": max_iter,
            "steps": [e * iters_per_epoch for e in cfg.SOLVER.STEPS
                      if 0 < e * iters_per_epoch < max_iter],
            "checkpoint_period": cfg.SOLVER.CHECKPOINT_PERIOD * iters_per_epoch}


class EpochStream:
    """The training batches as one stream, epoch after epoch (the sampler's shuffle depends only on
    the seed and the epoch), that ``start_at(iteration)`` begins at any iteration."""

    def __init__(self, loader, start_iter: int = 0):
        self.loader = loader
        self.iters_per_epoch = len(loader)
        self.start_iter = start_iter

    def start_at(self, iteration: int) -> None:
        """Begin the next ``iter(self)`` at ``iteration``."""
        self.start_iter = iteration

    def __iter__(self) -> Iterator:
        epoch, skip = divmod(self.start_iter, self.iters_per_epoch)
        while True:
            self.loader.sampler.set_epoch(epoch)
            for i, batch in enumerate(self.loader):
                if i >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0


class DistillStep(nn.Module):
    """What the training loop calls on each batch: ``(images, targets)`` -> the loss dict of the
    student (bare or in DDP) and the frozen teacher, the distillation weights scaled by the warm-up
    of DISTILL.WARMUP_ITERS. The teacher is held outside the module tree (never trained, never
    saved)."""

    def __init__(self, student: nn.Module, teacher, device: torch.device, warmup_iters: int):
        super().__init__()
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        self.device = device
        self.warmup_iters = int(warmup_iters)

    def forward(self, batch):
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        teacher = self._teacher[0] if self._teacher else None
        scale = warmup_factor(current_iteration(), self.warmup_iters)
        return distillation_losses(self.student, teacher, images, targets, scale)


def accuracy_counts(logits, targets, topk=(1, 5)):
    """logits [N, K], targets [N] -> number of images whose label is in the top-k, per k."""
    k_max = min(max(topk), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top.eq(targets[:, None])
    return [int(hit[:, :min(k, k_max)].any(dim=1).sum()) for k in topk]


def student_amp_dtype(cfg, device: torch.device):
    """The autocast dtype of the student's SOLVER.AMP on ``device`` (None when off): the ValueError
    of nst_det.engine.precision.amp_dtype, naming SOLVER.AMP_PRECISION, where the device cannot run
    it; for the default "" on a CPU without bfloat16, one that says to turn SOLVER.AMP off."""
    if not cfg.SOLVER.AMP:
        return None
    precision = cfg.SOLVER.AMP_PRECISION
    try:
        return amp_dtype(precision, device, "SOLVER.AMP_PRECISION")
    except ValueError as e:
        if precision:
            raise
        raise ValueError(f"SOLVER.AMP is on and SOLVER.AMP_PRECISION is '' (bfloat16 on the CPU), "
                         f"but the device '{device}' has no bfloat16 arithmetic (AVX-512 or AMX): "
                         f"set SOLVER.AMP False to train in float32") from e


def trainer_device(cfg) -> torch.device:
    """The device of MODEL.DEVICE (nst_det.engine.device.check_device: CUDA without a GPU is an error);
    under torch.distributed on CUDA, the GPU of this process's local rank."""
    device = check_device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and comm.get_world_size() > 1:
        device = torch.device("cuda", comm.get_local_rank())
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on every step's tensors (nst_det.engine.cpu_memory)
    return device


class ClsTrainer(ResumableTrainer, TrainerBase):
    """Trains and evaluates the classification student (see the module docstring).

    ``train_set``/``val_set`` replace the data sets of ``cfg.DATA`` (tests pass tiny ones); subclass
    and override :meth:`build_model` to train other modules. The device is MODEL.DEVICE (see
    :func:`trainer_device`). ``eval_only`` builds no training set; it also builds no teacher (and
    needs no teacher weights) unless ``eval_teacher``.
    """

    def __init__(self, cfg, train_set=None, val_set=None, eval_only: bool = False,
                 eval_teacher: bool = False):
        super().__init__()
        self.cfg = cfg
        # one training run per OUTPUT_DIR (evaluation writes no checkpoint: no lock)
        self._release_run_lock = (lambda: None) if eval_only else hold_run_lock(self,
                                                                                cfg.OUTPUT_DIR)
        self.device = trainer_device(cfg)
        with_teacher = not eval_only or eval_teacher
        # Precisions the device cannot run: refused here, before any data or network is built.
        if with_teacher and distill_terms(cfg):
            teacher_dtype(cfg, self.device)
        self.amp_dtype = student_amp_dtype(cfg, self.device)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.eval_only = eval_only
        seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + self.rank)
        batch = cfg.SOLVER.BATCH_SIZE
        if batch % self.world_size:
            raise ValueError(f"SOLVER.BATCH_SIZE {batch} is not divisible by the world size "
                             f"{self.world_size}")
        self.batch_per_process = batch // self.world_size

        self.val_set = val_set if val_set is not None else build_cls_dataset(cfg, train=False)
        pin_memory = self.device.type == "cuda"
        self.val_loader = build_val_loader(self.val_set, self.batch_per_process,
                                           cfg.DATA.NUM_WORKERS, pin_memory=pin_memory)
        input_shape = tuple(self.val_set[0][0].shape)
        self.student, self.teacher = self.build_model(cfg, input_shape, with_teacher=with_teacher)
        self.student.to(self.device)
        if cfg.MODEL.STUDENT.CHANNELS_LAST:
            to_channels_last(self.student)
        if self.teacher is not None:
            self.teacher.to(self.device)
            prepare_teacher(self.teacher, cfg, self.device)
        self._last_eval_results = {}
        if eval_only:
            self.checkpointer = AtomicCheckpointer(self.student.classifier, cfg.OUTPUT_DIR,
                                                   weights_check="complete",
                                                   weights_key="MODEL.STUDENT.WEIGHTS")
            return

        train = train_set if train_set is not None else build_cls_dataset(cfg, train=True)
        stream = EpochStream(build_train_loader(train, self.batch_per_process,
                                                cfg.DATA.NUM_WORKERS, seed=max(cfg.SEED, 0),
                                                pin_memory=pin_memory))
        self.iters_per_epoch = stream.iters_per_epoch
        schedule = epoch_schedule(cfg, self.iters_per_epoch)
        self.max_iter = schedule["max_iter"]
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=bool(cfg.SOLVER.NESTEROV) and cfg.SOLVER.MOMENTUM > 0,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        steps = schedule["steps"]
        self.scheduler = LRMultiplier(
            self.optimizer,
            MultiStepParamScheduler([cfg.SOLVER.GAMMA ** k for k in range(len(steps) + 1)],
                                    milestones=steps, num_updates=self.max_iter),
            self.max_iter)
        model = self.student
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.student, device_ids=device_ids)
        self._trainer = TrainLoop(
            DistillStep(model, self.teacher, self.device, cfg.DISTILL.WARMUP_ITERS), stream,
            self.optimizer, amp_dtype=self.amp_dtype, device_type=self.device.type)
        self.checkpointer = AtomicCheckpointer(self.student.classifier, cfg.OUTPUT_DIR,
                                               weights_check="complete",
                                               weights_key="MODEL.STUDENT.WEIGHTS",
                                               heads=self.student.heads,
                                               trainer=weakref.proxy(self))
        self.register_hooks(self.build_hooks(schedule))

    @classmethod
    def build_model(cls, cfg, input_shape, with_teacher: bool = True):
        """``(DistillationStudent, FrozenTeacher or None)``; ``with_teacher=False`` builds the
        student only (evaluation). Override to train other modules."""
        return build_distillation(cfg, input_shape, with_teacher=with_teacher)

    def build_hooks(self, schedule: dict):
        """Detectron2's hooks for the schedule of :func:`epoch_schedule`."""
        ret = [RNGCheckpointHook(schedule["checkpoint_period"], self.max_iter),
               hooks.IterationTimer(),
               hooks.LRScheduler(self.optimizer, self.scheduler)]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer,
                                                  schedule["checkpoint_period"],
                                                  max_iter=self.max_iter))
        ret.append(hooks.EvalHook(self.iters_per_epoch, self._evaluate_epoch))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(default_writers(self.cfg.OUTPUT_DIR, self.max_iter),
                                            period=self.cfg.LOG_PERIOD))
        return ret

    def _evaluate_epoch(self) -> dict:
        epoch = (self.iter + 1) // self.iters_per_epoch
        metrics = self.evaluate()
        self._last_eval_results = metrics
        self.storage.put_scalar("epoch", epoch, smoothing_hint=False)
        logger.info(f"epoch {epoch}/{self.cfg.SOLVER.EPOCHS}: val top-1 {metrics['top1']:.2f}%  "
                    f"top-5 {metrics['top5']:.2f}%")
        return {"val": metrics}

    def teacher_weights_file(self) -> str:
        """DISTILL.TEACHER.WEIGHTS when a teacher was built (recorded in the checkpoints, checked by
        --resume)."""
        return self.cfg.DISTILL.TEACHER.WEIGHTS if self.teacher is not None else ""

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume``, continue from the newest readable checkpoint in OUTPUT_DIR (if any);
        the student's initial weights (MODEL.STUDENT.WEIGHTS) were loaded when it was built."""
        if not resume:
            return
        if not self.checkpointer.has_checkpoint():
            logger.info(f"--resume: no checkpoint in {self.cfg.OUTPUT_DIR}, starting from scratch")
            return
        if self.eval_only:
            self.checkpointer.resume_or_load("", resume=True)
            return
        self.resume_or_load_weights("", resume=True)
        logger.info(f"Resumed: iteration {self.start_iter} of {self.max_iter} "
                    f"(epoch {self.start_iter // self.iters_per_epoch} of {self.cfg.SOLVER.EPOCHS} "
                    f"done)")

    def train(self):
        """Train from ``start_iter`` to the end of SOLVER.EPOCHS; returns the last validation
        metrics {"top1", "top5"} (%)."""
        logger.info(f"Training {self.cfg.SOLVER.EPOCHS} epochs of {self.iters_per_epoch} "
                    f"iterations, batch {self.cfg.SOLVER.BATCH_SIZE} ({self.batch_per_process} x "
                    f"{self.world_size} processes)")
        try:
            super().train(self.start_iter, self.max_iter)
        finally:
            self._release_run_lock()
        return self._last_eval_results

    @torch.no_grad()
    def evaluate(self, teacher: bool = False) -> dict:
        """Top-1 / top-5 accuracy (%) of the student (under SOLVER.AMP's autocast when on) or of the
        teacher (in DISTILL.TEACHER.PRECISION, as it teaches) on the validation set; the random
        state is left as it was."""
        with preserved_rng():
            return self._evaluate(teacher)

    def _evaluate(self, teacher: bool) -> dict:
        if teacher and self.teacher is None:
            if self.student.terms:
                raise ValueError("the teacher was not built: an eval-only trainer builds it with "
                                 "eval_teacher=True (tools/train_cls.py --eval-teacher)")
            raise ValueError("no teacher is configured (every DISTILL.*.WEIGHT is 0)")
        net = self.teacher if teacher else self.student.classifier
        was_training = net.training
        net.eval()
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, targets in self.val_loader:
            images, targets = images.to(self.device), targets.to(self.device)
            with autocast(self.amp_dtype, self.device):  # as in training (the teacher: its own)
                out = net(images)
            logits = out[0] if isinstance(out, tuple) else out
            top1, top5 = accuracy_counts(logits.float(), targets)
            counts += torch.tensor([top1, top5, len(targets)], dtype=torch.float64,
                                   device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(counts)
        if not teacher:
            net.train(was_training)
        n = max(counts[2].item(), 1.0)
        return {"top1": 100.0 * counts[0].item() / n, "top5": 100.0 * counts[1].item() / n}


def default_cls_setup(cfg, args=None) -> None:
    """Detectron2's ``default_setup`` (as ``tools/train_net.py``): OUTPUT_DIR made by rank 0, the
    fvcore and detectron2 loggers (console; OUTPUT_DIR/log.txt, ``log.txt.rank<N>`` above rank 0),
    the environment, command line and config logged, the config saved by rank 0 to
    OUTPUT_DIR/config.yaml, SEED + rank seeded (as :class:`ClsTrainer` does), cudnn benchmark off
    (the classification config has no CUDNN_BENCHMARK); then the nst_det logger to the same
    files."""
    # default_setup reads and saves a config it recognises as Detectron2's CfgNode; the
    # classification config is fvcore's (no VERSION key): the same tree, the same dump().
    default_setup(D2CfgNode(cfg), args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nst_det",
                 abbrev_name="nst_det")
