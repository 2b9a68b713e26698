"""The training loop of the classification stage (``tools/train_cls.py``).

``ClsTrainer(cfg)`` trains the student of :mod:`nst_det.classification.distill` with SGD (momentum,
optional Nesterov, weight decay) and a step schedule: ``torch.optim.lr_scheduler.MultiStepLR``
stepped once per EPOCH at ``SOLVER.STEPS``. Distillation weights warm up linearly over
``DISTILL.WARMUP_ITERS`` iterations. Everything runs on ``MODEL.DEVICE`` (CUDA asked for on a
machine without one is an error, never a silent fall-back to the CPU). On CUDA, ``SOLVER.AMP``
turns on autocast + ``GradScaler``. Under torch.distributed the student is wrapped by
``DistributedDataParallel``; the frozen teacher is not. Only rank 0 writes files.

Each epoch ends with top-1/top-5 on the validation set and, every ``SOLVER.CHECKPOINT_PERIOD``
epochs and after the last, an atomic checkpoint with everything ``--resume`` needs to continue
exactly: epoch, iteration, student, optimizer, scheduler, scaler and the RNG states of python,
numpy and torch of every process (the shuffling order depends only on seed and epoch).

Logs: every ``LOG_PERIOD`` iterations each loss term, lr, images/s and ETA go to the console,
``OUTPUT_DIR/metrics.json`` (JSON lines) and TensorBoard (Detectron2's event writers).
"""
import datetime
import logging
import math
import os
import random
import time
from collections import deque

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, JSONWriter, TensorboardXWriter
from torch.nn.parallel import DistributedDataParallel

from nst_det.classification.checkpointer import ClsCheckpointer, checkpoint_name
from nst_det.classification.data import build_cls_dataset, build_train_loader, build_val_loader
from nst_det.classification.distill import (
    NonFiniteLossError,
    build_distillation,
    distillation_losses,
)
from nst_det.engine.device import check_device

__all__ = ["ClsTrainer", "default_cls_setup", "NonFiniteLossError", "accuracy_counts", "seed_all",
           "rng_state", "set_rng_state", "trainer_device"]

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def accuracy_counts(logits, targets, topk=(1, 5)):
    """logits [N, K], targets [N] -> number of images whose label is in the top-k, per k."""
    k_max = min(max(topk), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top.eq(targets[:, None])
    return [int(hit[:, :min(k, k_max)].any(dim=1).sum()) for k in topk]


def trainer_device(cfg) -> torch.device:
    """The device of MODEL.DEVICE (nst_det.engine.device.check_device: CUDA without a GPU is an error);
    under torch.distributed on CUDA, the GPU of this process's local rank."""
    device = check_device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and comm.get_world_size() > 1:
        device = torch.device("cuda", comm.get_local_rank())
    return device


class ClsTrainer:
    """Trains and evaluates the classification student (see the module docstring).

    ``train_set``/``val_set`` replace the data sets of ``cfg.DATA`` (tests pass tiny ones); subclass
    and override :meth:`build_model` to train other modules. The device is MODEL.DEVICE (see
    :func:`trainer_device`). ``eval_only`` builds no training set; it also builds no teacher (and
    needs no MODEL.TEACHER.WEIGHTS) unless ``eval_teacher``.
    """

    def __init__(self, cfg, train_set=None, val_set=None, eval_only: bool = False,
                 eval_teacher: bool = False):
        self.cfg = cfg
        self.device = trainer_device(cfg)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.eval_only = eval_only
        seed = cfg.SEED if cfg.SEED >= 0 else random.SystemRandom().randrange(2**31)
        seed_all(seed + self.rank)
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
        self.student, self.teacher = self.build_model(
            cfg, input_shape, with_teacher=not eval_only or eval_teacher)
        self.student.to(self.device)
        self.loss_names = ["loss_cls"] + [f"loss_{t}" for t in self.student.terms]
        if self.teacher is not None:
            self.teacher.to(self.device)

        self.amp = bool(cfg.SOLVER.AMP) and self.device.type == "cuda"
        if cfg.SOLVER.AMP and not self.amp:
            logger.warning(f"SOLVER.AMP is on but MODEL.DEVICE is '{cfg.MODEL.DEVICE}': "
                           f"mixed precision is used on CUDA only, running in float32")
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=bool(cfg.SOLVER.NESTEROV) and cfg.SOLVER.MOMENTUM > 0,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.SOLVER.STEPS), gamma=cfg.SOLVER.GAMMA)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.model = self.student
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=device_ids)

        self.train_loader = None
        if not eval_only:
            train = train_set if train_set is not None else build_cls_dataset(cfg, train=True)
            self.train_loader = build_train_loader(train, self.batch_per_process,
                                                   cfg.DATA.NUM_WORKERS, seed=max(cfg.SEED, 0),
                                                   pin_memory=pin_memory)
        self.iters_per_epoch = len(self.train_loader) if self.train_loader is not None else 0
        self.max_iter = cfg.SOLVER.EPOCHS * self.iters_per_epoch
        self.start_epoch, self.iter = 0, 0
        self.checkpointer = ClsCheckpointer(cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process())
        self.last_checkpoint = None

    @classmethod
    def build_model(cls, cfg, input_shape, with_teacher: bool = True):
        """``(DistillationStudent, FrozenTeacher or None)``; ``with_teacher=False`` builds the
        student only (evaluation). Override to train other modules."""
        return build_distillation(cfg, input_shape, with_teacher=with_teacher)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self, epoch: int) -> dict:
        """Everything --resume needs after ``epoch`` finished epochs (RNG of every process)."""
        rngs = comm.all_gather(rng_state()) if self.world_size > 1 else [rng_state()]
        state = self.student.student_state_dict()
        state.update({
            "epoch": epoch,
            "iteration": self.iter,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "world_size": self.world_size,
            "cfg": self.cfg.dump(),
        })
        return state

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore a checkpoint of :meth:`state_dict` into this trainer (an eval-only trainer
        takes the student classifier only)."""
        if self.eval_only:
            self.student.classifier.load_state_dict(ckpt["model"])
            self.start_epoch, self.iter = int(ckpt["epoch"]), int(ckpt["iteration"])
            return
        self.student.load_student_state_dict(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.iter = int(ckpt["epoch"]), int(ckpt["iteration"])
        rngs = ckpt.get("rng", [])
        if len(rngs) == self.world_size:
            set_rng_state(rngs[self.rank])
        else:
            logger.warning(f"checkpoint was written by {len(rngs)} processes, this run has "
                           f"{self.world_size}: RNG states not restored, resume is not exact")

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume``, continue from the newest complete checkpoint in OUTPUT_DIR (if any)."""
        if not resume:
            return
        path, ckpt = self.checkpointer.load_latest()
        if ckpt is None:
            logger.info(f"--resume: no checkpoint in {self.cfg.OUTPUT_DIR}, starting from scratch")
            return
        self.load_state_dict(ckpt)
        self.last_checkpoint = path
        logger.info(f"Resumed from {path}: {self.start_epoch} epochs, iteration {self.iter} done")

    def save(self, epoch: int, final: bool) -> None:
        state = self.state_dict(epoch)
        if comm.is_main_process():
            self.last_checkpoint = self.checkpointer.save(checkpoint_name(epoch, final), state)
        comm.synchronize()

    # ---------------------------------------------------------------- training
    def distill_scale(self, iteration: int) -> float:
        """Warm-up factor of the distillation weights at ``iteration`` (1 when off)."""
        warmup = self.cfg.DISTILL.WARMUP_ITERS
        return 1.0 if warmup <= 0 else min(1.0, (iteration + 1) / warmup)

    def _reduced(self, losses: dict) -> dict:
        """Mean of every loss term over the processes (floats), for logging and NaN checks."""
        names = sorted(losses)
        values = torch.stack([torch.as_tensor(losses[k], device=self.device).detach().float()
                              for k in names])
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
            values /= self.world_size
        return dict(zip(names, values.tolist()))

    def _check_finite(self, reduced: dict, epoch: int, detail: str = "") -> None:
        bad = [k for k, v in reduced.items() if not math.isfinite(v)]
        if bad:
            # every process sees the reduced values: all of them gather the details and stop
            details = comm.all_gather(detail) if self.world_size > 1 else [detail]
            ranks = [r for r, d in enumerate(details) if d]
            if ranks:
                detail = "".join(f" (rank {r}{details[r]})" for r in ranks)
            raise NonFiniteLossError(
                f"loss term {', '.join(repr(k) for k in bad)} is "
                f"{', '.join(str(reduced[k]) for k in bad)} at iteration {self.iter} "
                f"(epoch {epoch + 1}){detail}; training stopped before the update. Last good "
                f"checkpoint left untouched: {self.last_checkpoint or 'none yet'}")

    def run_step(self, images, targets, epoch: int) -> dict:
        """One SGD step on one batch; returns the process-averaged loss terms."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        detail = ""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            try:
                losses = distillation_losses(self.model, self.teacher, images, targets,
                                             self.distill_scale(self.iter))
            except NonFiniteLossError as e:
                # Every process joins the reduction below, so all of them stop together.
                losses = {n: float("nan") if n == e.term else 0.0 for n in self.loss_names}
                detail = f": {e}"
        reduced = self._reduced(losses)
        self._check_finite(reduced, epoch, detail)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        reduced["total_loss"] = sum(v for k, v in reduced.items())
        return reduced

    def train(self):
        """Train from ``start_epoch`` to SOLVER.EPOCHS; returns the last validation metrics."""
        cfg = self.cfg
        writers = []
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            writers = [JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
                       TensorboardXWriter(cfg.OUTPUT_DIR)]
        if self.start_epoch >= cfg.SOLVER.EPOCHS:
            logger.info(f"Training already finished ({self.start_epoch} epochs)")
        logger.info(f"Training epochs {self.start_epoch + 1}..{cfg.SOLVER.EPOCHS}, "
                    f"{self.iters_per_epoch} iterations each, batch {cfg.SOLVER.BATCH_SIZE} "
                    f"({self.batch_per_process} x {self.world_size} processes)")
        metrics = {}
        times = deque(maxlen=20)
        with EventStorage(self.iter) as storage:
            try:
                for epoch in range(self.start_epoch, cfg.SOLVER.EPOCHS):
                    self.student.train()
                    self.train_loader.sampler.set_epoch(epoch)
                    start = time.perf_counter()
                    for i, (images, targets) in enumerate(self.train_loader):
                        storage.iter = self.iter
                        lr = self.optimizer.param_groups[0]["lr"]
                        reduced = self.run_step(images, targets, epoch)
                        now = time.perf_counter()
                        times.append(now - start)
                        start = now
                        step_time = float(np.median(times))
                        storage.put_scalars(lr=lr, epoch=epoch + 1, **reduced,
                                            images_per_sec=cfg.SOLVER.BATCH_SIZE / step_time,
                                            smoothing_hint=False)
                        self.iter += 1
                        if self.iter % cfg.LOG_PERIOD == 0 or self.iter == self.max_iter:
                            self._log(storage, reduced, lr, step_time, epoch)
                            # The epoch's last iteration is written with its val metrics below
                            # (writers skip iterations they already wrote).
                            if i + 1 < self.iters_per_epoch:
                                for w in writers:
                                    w.write()
                    self.scheduler.step()
                    metrics = self.evaluate()
                    storage.put_scalars(**{f"val/{k}": v for k, v in metrics.items()},
                                        smoothing_hint=False)
                    logger.info(f"epoch {epoch + 1}/{cfg.SOLVER.EPOCHS}: val top-1 "
                                f"{metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%")
                    for w in writers:
                        w.write()
                    last = epoch + 1 == cfg.SOLVER.EPOCHS
                    if last or (epoch + 1) % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                        self.save(epoch + 1, final=last)
                    self.start_epoch = epoch + 1
            finally:
                for w in writers:
                    w.close()
        return metrics

    def _log(self, storage, reduced, lr, step_time, epoch):
        eta = datetime.timedelta(seconds=int(step_time * (self.max_iter - self.iter)))
        terms = "  ".join(f"{k}: {v:.4g}" for k, v in sorted(reduced.items()))
        logger.info(f"eta: {eta}  epoch: {epoch + 1}  iter: {self.iter}/{self.max_iter}  {terms}  "
                    f"lr: {lr:.4g}  images/s: {self.cfg.SOLVER.BATCH_SIZE / step_time:.1f}")

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, teacher: bool = False) -> dict:
        """Top-1 / top-5 accuracy (%) of the student (or the teacher) on the validation set."""
        if teacher and self.teacher is None:
            if self.student.terms:
                raise ValueError("the teacher was not built: an eval-only trainer builds it with "
                                 "eval_teacher=True (tools/train_cls.py --eval-teacher)")
            raise ValueError("no teacher is configured (every DISTILL.*.WEIGHT is 0)")
        net = self.teacher.taps if teacher else self.student.classifier
        was_training = net.training
        net.eval()
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, targets in self.val_loader:
            images, targets = images.to(self.device), targets.to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16,
                                enabled=self.amp):
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
    """Logging (console; rank 0 also to OUTPUT_DIR/log.txt), the run's config saved by rank 0 to
    OUTPUT_DIR/config.yaml. No other process writes a file."""
    from detectron2.utils.logger import setup_logger

    rank = comm.get_rank()
    output = None
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        output = cfg.OUTPUT_DIR
    setup_logger(output, distributed_rank=rank, name="fvcore")
    setup_logger(output, distributed_rank=rank, name="detectron2")
    setup_logger(output, distributed_rank=rank, name="nst_det", abbrev_name="nst_det")
    logger.info(f"Rank {rank} of {comm.get_world_size()}; command line arguments: {args}")
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        logger.info(f"Running with full config (saved to {path}):\n{cfg.dump()}")
