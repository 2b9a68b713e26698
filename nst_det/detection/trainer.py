"""DistillTrainer: Detectron2's DefaultTrainer with nst_det's evaluators, evaluation of the student
alone (no teacher file needed) and of the teacher alone."""
import logging
import os
import weakref

import torch

from detectron2.engine import DefaultTrainer, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nst_det.detection.data import build_test_loader, build_train_loader
from nst_det.detection.data.build import check_class_lists, check_num_classes, class_map_for_test
from nst_det.detection.evaluation import ClassMapEvaluator, build_evaluator
from nst_det.detection.load_config import load_nst_cfg, student_cfg
from nst_det.detection.teacher import build_teacher
from nst_det.engine.checkpointer import AtomicCheckpointer, check_eval_weights
from nst_det.engine.cpu_memory import keep_freed_memory
from nst_det.engine.device import check_device
from nst_det.engine.precision import amp_dtype, to_channels_last
from nst_det.engine.run_lock import hold_run_lock
from nst_det.engine.train_loop import RNGCheckpointHook, ResumableTrainer, TrainLoop, preserved_rng

__all__ = ["DistillTrainer", "setup_cfg", "classifier_file_hint"]

logger = logging.getLogger(__name__)


def classifier_file_hint(path: str, checkpoint) -> str:
    """A sentence saying that ``checkpoint`` (read from ``path``) holds a classifier, not a
    detector; "" otherwise."""
    if not isinstance(checkpoint, dict):
        return ""
    model = checkpoint.get("model", checkpoint)
    if not isinstance(model, dict):
        return ""
    keys = list(model)
    if "heads" in checkpoint or any(k.startswith(("layer1.", "fc.")) for k in keys):
        return (f"'{path}' holds classifier weights (a checkpoint of tools/train_cls.py or a "
                f"torchvision state dict), not a Detectron2 model: convert it first with "
                f"`python tools/convert_cls_to_d2.py {path} OUT.pkl --fpn` and give OUT.pkl as "
                f"MODEL.WEIGHTS")
    return ""


def detection_checkpointer(cfg, model, weights_check: str, **checkpointables) -> AtomicCheckpointer:
    """The checkpointer of a detector in OUTPUT_DIR; classifier files refused as MODEL.WEIGHTS."""
    return AtomicCheckpointer(model, cfg.OUTPUT_DIR, weights_check=weights_check,
                              foreign_file_hint=classifier_file_hint, **checkpointables)


def setup_cfg(args, setup: bool = True, classification_defaults=None):
    """The frozen config of a ``tools/train_net.py`` command line (``args.config_file``,
    ``args.opts``; paths relative to the yaml that names them; a classification config refused
    naming tools/train_cls.py when ``classification_defaults`` is given, see
    :func:`~nst_det.detection.load_config.load_nst_cfg`), its MODEL.DEVICE checked before
    anything is built; ``setup`` also runs Detectron2's ``default_setup`` and nst_det's logger."""
    cfg = load_nst_cfg(args.config_file, args.opts,
                       classification_defaults=classification_defaults)
    check_device(cfg.MODEL.DEVICE)
    if setup:
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nst_det")
    return cfg


class DistillTrainer(ResumableTrainer, DefaultTrainer):
    """DefaultTrainer for plain and distilled detectors: VOC/COCO evaluators by data set type,
    atomic checkpoints that resume exactly, a stop at a non-finite loss term, and unusable
    training images skipped.

    Built by DefaultTrainer's own ``__init__`` (model, optimizer, data loader, DDP, scheduler,
    hooks); :meth:`build_hooks`, which that ``__init__`` calls once its inner trainer and
    checkpointer exist and before any hook holds them, puts nst_det's TrainLoop
    (nst_det.engine.train_loop) and AtomicCheckpointer in their places. The hooks are
    DefaultTrainer's, led by the one that keeps every process's random state for the checkpoints
    (RNGCheckpointHook)."""

    def __init__(self, cfg):
        device = check_device(cfg.MODEL.DEVICE)
        # SOLVER.AMP.PRECISION the device cannot run: refused before anything is built or locked
        self._amp_dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION, device, "SOLVER.AMP.PRECISION") \
            if cfg.SOLVER.AMP.ENABLED else None
        self._release_run_lock = hold_run_lock(self, cfg.OUTPUT_DIR)  # one run per OUTPUT_DIR
        check_num_classes(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
        if device.type == "cpu":
            keep_freed_memory()  # no page faults on every step's tensors (nst_det.engine.cpu_memory)
        super().__init__(cfg)
        # The training sets are loaded (their classes known): the test sets must list the same
        # classes in the same order, checked before training (and again before each evaluation).
        check_class_lists(cfg, cfg.DATASETS.TEST)

    def build_hooks(self):
        """nst_det's inner loop and checkpointer in place of DefaultTrainer's (same model, data
        loader and optimizer), then DefaultTrainer's hooks led by the one that keeps every
        process's random state for the checkpoints (it runs first, before anything else of the
        iteration's end)."""
        cfg, plain = self.cfg, self._trainer
        self._trainer = TrainLoop(plain.model, plain.data_loader, plain.optimizer,
                                  amp_dtype=self._amp_dtype,
                                  device_type=torch.device(cfg.MODEL.DEVICE).type)
        self.checkpointer = detection_checkpointer(
            cfg, plain.model, "partial" if cfg.MODEL.ALLOW_PARTIAL_WEIGHTS else "most",
            trainer=weakref.proxy(self))
        rng = RNGCheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
        return [rng] + super().build_hooks()

    @classmethod
    def build_model(cls, cfg):
        """DefaultTrainer's model, its convolutions channels-last with MODEL.CHANNELS_LAST (the
        student's only: a distilling model's teacher follows DISTILL.TEACHER.CHANNELS_LAST); a
        teacher precision the device lacks is refused here."""
        model = super().build_model(cfg)
        if getattr(model, "teacher", None) is not None:
            model.teacher_dtype()  # DISTILL.TEACHER.PRECISION refused here, before training
        return to_channels_last(model) if cfg.MODEL.CHANNELS_LAST else model

    def teacher_weights_file(self) -> str:
        """DISTILL.TEACHER.WEIGHTS when the model distils from a teacher (recorded in the
        checkpoints, checked by --resume)."""
        model = getattr(self.model, "module", self.model)  # under DDP
        return self.cfg.DISTILL.TEACHER.WEIGHTS if getattr(model, "teacher", None) is not None \
            else ""

    def resume_or_load(self, resume=True):
        """Load MODEL.WEIGHTS or, with ``resume``, the newest readable checkpoint of OUTPUT_DIR,
        and continue its data stream and random state."""
        self.resume_or_load_weights(self.cfg.MODEL.WEIGHTS, resume=resume)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The evaluator of ``dataset_name``; with DATASETS.TEST_CLASS_MAP "by_name" and a test
        set that lists the training classes in another order, its detections' classes are mapped
        to the test set's by name first."""
        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        mapping = class_map_for_test(cfg, dataset_name)
        return evaluator if mapping is None else ClassMapEvaluator(evaluator, mapping)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, leaving the random state as it was (evaluation in the middle of
        training then changes nothing of what follows)."""
        with preserved_rng():
            return super().test(cfg, model, evaluators=evaluators)

    def train(self):
        """Train; returns the final evaluation results ({data set: {task: metrics}} or, for one
        test set, {task: metrics}) or None when no evaluation ran."""
        try:
            super().train()
        finally:
            self._release_run_lock()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_student(cls, cfg, resume: bool = False):
        """The student alone (plain GeneralizedRCNN, no teacher), loaded from MODEL.WEIGHTS or,
        with ``resume``, from the last checkpoint in OUTPUT_DIR."""
        model = cls.build_model(student_cfg(cfg))
        check = "partial" if cfg.MODEL.ALLOW_PARTIAL_WEIGHTS else "complete"
        detection_checkpointer(cfg, model, check).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return model

    @classmethod
    def test_student(cls, cfg, resume: bool = False):
        """Evaluate the student alone on DATASETS.TEST (``--eval-only``); refused, naming
        MODEL.WEIGHTS / OUTPUT_DIR, when no weights would be loaded."""
        check_eval_weights(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", cfg.OUTPUT_DIR, resume)
        return cls.test(cfg, cls.build_student(cfg, resume=resume))

    @classmethod
    def test_teacher(cls, cfg):
        """Evaluate the teacher of DISTILL alone on the student's DATASETS.TEST, at the
        student's test size, with the same evaluators (``--eval-only --eval-teacher``); its
        inference files go to OUTPUT_DIR/inference_teacher, apart from the student's."""
        teacher = build_teacher(cfg)
        teacher_cfg = cfg.clone()
        teacher_cfg.defrost()
        teacher_cfg.INPUT.FORMAT = teacher.input_format  # images are read as the teacher expects
        teacher_cfg.freeze()
        logger.info("Evaluating the teacher alone.")
        evaluators = [
            cls.build_evaluator(teacher_cfg, name,
                                os.path.join(cfg.OUTPUT_DIR, "inference_teacher", name))
            for name in cfg.DATASETS.TEST]
        return cls.test(teacher_cfg, teacher, evaluators=evaluators)
