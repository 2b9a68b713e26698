"""Training and evaluation of LazyConfig models (``tools/lazyconfig_train_net.py``): Detectron2's
LazyConfig sections (``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier``, ``train``) on nst_det's engine, so a LazyConfig student keeps every guarantee
of the yaml DistillTrainer: the frozen teacher outside the checkpoints, atomic checkpoints, an
exact ``--resume`` (optimizer, schedule, data stream and random state), a stop at a non-finite
loss term on every process, the teacher on the student's device, and evaluation of the student
alone with the evaluators of ``dataloader.evaluator``."""
import logging
import os
import weakref

from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import TrainerBase, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import (COCOEvaluator, DatasetEvaluators, inference_on_dataset,
                                   print_csv_format)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.utils.data import IterableDataset

from nst_det.detection.data.build import ResumableTrainLoader, _StartableSampler
from nst_det._d2_compat import has_compiled_ops
from nst_det.detection.config import lazy_key_message
from nst_det.detection.lazy import check_lazy_distill, student_node
from nst_det.detection.trainer import classifier_file_hint
from nst_det.engine.checkpointer import AtomicCheckpointer
from nst_det.engine.config_paths import REPO_ROOT, local_path
from nst_det.engine.cpu_memory import keep_freed_memory
from nst_det.engine.device import check_device
from nst_det.engine.precision import amp_dtype, to_channels_last
from nst_det.engine.train_loop import RNGCheckpointHook, ResumableTrainer, TrainLoop, preserved_rng

__all__ = ["LazyTrainer", "setup_lazy_cfg", "do_test", "build_lazy_student",
           "build_lazy_train_loader", "check_train_device"]

logger = logging.getLogger(__name__)

_SECTIONS = ("model", "train")  # what every run needs; training also the three below
_TRAIN_SECTIONS = ("dataloader", "optimizer", "lr_multiplier")


def _config_file(path: str) -> str:
    """``path`` as given, or, when it is relative and not in the current directory, in the
    repository (the yaml tool reads its paths the same way)."""
    if os.path.isabs(path) or os.path.isfile(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    if os.path.isfile(in_repo):
        return in_repo
    raise FileNotFoundError(f"config file '{path}' does not exist (tried {os.path.abspath(path)} "
                            f"and {in_repo})")


def check_train_device(device: str):
    """``torch.device(train.device)``, checked as the yaml tool checks MODEL.DEVICE, the error
    written for a LazyConfig (``train.device=cpu``)."""
    try:
        return check_device(device, "train.device")
    except ValueError as e:
        message = str(e).replace("train.device cpu", "train.device=cpu").replace(
            "tools/train_net.py", "tools/lazyconfig_train_net.py")
        raise ValueError(message) from e


def setup_lazy_cfg(args, setup: bool = True):
    """The LazyConfig of a ``tools/lazyconfig_train_net.py`` command line (``--config-file``,
    ``key=value`` overrides), its sections, ``train.device`` and distillation settings checked
    before anything is built; ``setup`` also runs Detectron2's ``default_setup`` and nst_det's
    logger in ``train.output_dir``."""
    cfg = LazyConfig.load(_config_file(args.config_file))
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    needed = _SECTIONS + (() if args.eval_only else _TRAIN_SECTIONS)
    missing = [s for s in needed if s not in cfg]
    if missing:
        raise KeyError(f"config '{args.config_file}' has no {missing} section(s); "
                       f"tools/lazyconfig_train_net.py needs {list(needed)}")
    check_train_device(cfg.train.device)
    check_lazy_distill(cfg)
    if setup:
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="nst_det")
    return cfg


def build_lazy_train_loader(node):
    """The train loader of ``dataloader.train``. Detectron2's ``build_detection_train_loader``
    (the zoo's) becomes a :class:`~nst_det.detection.data.build.ResumableTrainLoader`: its sampler
    (``sampler``, or the TrainingSampler that Detectron2 makes when none is given) can start at
    an iteration, so ``--resume`` continues the data stream. Any other loader is instantiated as
    it is (a resumed run then starts its data stream afresh; logged)."""
    target = node["_target_"]
    if target is not build_detection_train_loader and target != (
            f"{build_detection_train_loader.__module__}.build_detection_train_loader"):
        logger.warning(f"dataloader.train is {target}, not build_detection_train_loader: "
                       f"--resume will not continue its data stream where it stopped")
        return instantiate(node)
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_"}
    dataset = kwargs["dataset"]
    if isinstance(dataset, IterableDataset):
        return build_detection_train_loader(**kwargs)
    sampler = kwargs.get("sampler") or TrainingSampler(len(dataset))
    kwargs["sampler"] = startable = _StartableSampler(sampler)
    loader = build_detection_train_loader(**kwargs)
    return ResumableTrainLoader(loader, startable,
                                kwargs["total_batch_size"] // comm.get_world_size())


def do_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with the evaluator(s) of
    ``dataloader.evaluator`` (a list: all of them); None when the config has no evaluator. The
    random state is left as it was."""
    if "evaluator" not in cfg.dataloader:
        return None
    with preserved_rng():
        evaluator = instantiate(cfg.dataloader.evaluator)
        if isinstance(evaluator, (list, tuple)) or type(evaluator).__name__ == "ListConfig":
            evaluator = DatasetEvaluators(list(evaluator))
        _python_cocoeval_without_compiled_ops(evaluator)
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def _python_cocoeval_without_compiled_ops(evaluator) -> None:
    """A COCOEvaluator of the config (the model zoo's LazyConfig files leave ``use_fast_impl`` at
    its default, True) evaluates with pycocotools' COCOeval where Detectron2 has no compiled
    ``_C`` (whose fast COCOeval it would call): the same numbers, the Python implementation."""
    if has_compiled_ops():
        return
    for one in getattr(evaluator, "_evaluators", [evaluator]):
        if isinstance(one, COCOEvaluator) and getattr(one, "_use_fast_impl", False):
            logger.info(f"{type(one).__name__}: Detectron2 has no compiled ops here, evaluating "
                        f"with pycocotools' COCOeval (use_fast_impl=False)")
            one._use_fast_impl = False


def _checkpointer(cfg, model, weights_check: str, **checkpointables) -> AtomicCheckpointer:
    if cfg.train.get("allow_partial_weights", False):
        weights_check = "partial"
    return AtomicCheckpointer(model, cfg.train.output_dir, weights_check=weights_check,
                              weights_key="train.init_checkpoint",
                              foreign_file_hint=classifier_file_hint, **checkpointables)


def build_lazy_student(cfg, resume: bool = False):
    """The student of ``cfg.model`` alone (no teacher built, no teacher file needed) on
    ``train.device``, loaded completely from ``train.init_checkpoint`` or, with ``resume``, from
    the newest checkpoint of ``train.output_dir``."""
    if not resume and not cfg.train.init_checkpoint:
        raise ValueError("train.init_checkpoint is empty: --eval-only evaluates the weights it "
                         "names (e.g. train.init_checkpoint=output/.../model_final.pth), or the "
                         "newest checkpoint of train.output_dir with --resume")
    model = instantiate(student_node(cfg.model))
    model.to(cfg.train.device)
    _checkpointer(cfg, model, "complete").resume_or_load(local_path(cfg.train.init_checkpoint),
                                                         resume=resume)
    return model


class LazyTrainer(ResumableTrainer, TrainerBase):
    """The training of a LazyConfig model (``tools/lazyconfig_train_net.py``): nst_det's
    TrainLoop (non-finite stop, optional AMP on CUDA), AtomicCheckpointer and exact resume, with
    the hooks of Detectron2's LazyConfig tool, led by the one that keeps every process's random
    state for the checkpoints (RNGCheckpointHook)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        device = check_train_device(cfg.train.device)
        if device.type == "cpu":
            keep_freed_memory()  # nst_det.engine.cpu_memory
        model = instantiate(cfg.model)
        if cfg.train.get("channels_last", False):  # as the yaml configs' MODEL.CHANNELS_LAST
            to_channels_last(model)
        logger.info(f"Model:\n{model}")
        model.to(cfg.train.device)  # the teacher, held by a distilling model, moves with it
        if getattr(model, "teacher", None) is not None:
            try:  # refused here, before training
                model.teacher_dtype()
            except ValueError as e:
                raise ValueError(lazy_key_message(str(e))) from e
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        data_loader = build_lazy_train_loader(cfg.dataloader.train)
        model = create_ddp_model(model, **cfg.train.get("ddp", {}))
        amp_settings = cfg.train.get("amp", {})
        # train.amp.precision: as the yaml configs' SOLVER.AMP.PRECISION ("" = the device's type)
        dtype = amp_dtype(amp_settings.get("precision", ""), device, "train.amp.precision") \
            if amp_settings.get("enabled", False) else None
        self._trainer = TrainLoop(model, data_loader, optimizer, amp_dtype=dtype,
                                  device_type=device.type)
        self.checkpointer = _checkpointer(cfg, model, "most", trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = int(cfg.train.max_iter)
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())

    @property
    def model(self):
        return self._trainer.model

    @property
    def optimizer(self):
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    def build_hooks(self):
        cfg = self.cfg
        checkpointer = cfg.train.get("checkpointer", {})
        main = comm.is_main_process()
        return [
            RNGCheckpointHook(checkpointer.get("period", 0), self.max_iter),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(self.checkpointer, **checkpointer) if main else None,
            hooks.EvalHook(cfg.train.get("eval_period", 0), self._test),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, self.max_iter),
                                 period=cfg.train.get("log_period", 20)) if main else None,
        ]

    def _test(self):
        self._last_eval_results = do_test(self.cfg, self.model)
        return self._last_eval_results

    def resume_or_load(self, resume: bool = True):
        """Load ``train.init_checkpoint`` or, with ``resume``, the newest readable checkpoint of
        ``train.output_dir``, and continue its data stream and random state."""
        self.resume_or_load_weights(local_path(self.cfg.train.init_checkpoint), resume=resume)
        if resume and self.start_iter > 0 and self.cfg.train.get("seed", -1) < 0:
            logger.warning("train.seed is not set: the training sampler shuffles with a new seed "
                           "in every run, so the resumed run sees another order of images than "
                           "the uninterrupted one would (+train.seed=0 makes --resume exact)")

    def train(self):
        """Train from ``start_iter`` to ``train.max_iter``; returns the last evaluation's results
        (None when none ran)."""
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results
