"""DistillTrainer: Detectron2's DefaultTrainer with nst_det's evaluators, evaluation of the student
alone (no teacher file needed) and of the teacher alone."""
import logging
import os
import weakref

from detectron2.engine import DefaultTrainer, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nst_det.engine.checkpointer import AtomicDetectionCheckpointer
from nst_det.detection.load_config import load_nst_cfg, student_cfg
from nst_det.detection.data import build_test_loader, build_train_loader
from nst_det.detection.data.build import check_num_classes
from nst_det.engine.device import check_device
from nst_det.detection.evaluation import build_evaluator
from nst_det.detection.teacher import build_teacher

from nst_det.engine.train_loop import as_train_loop

__all__ = ["DistillTrainer", "setup_cfg"]

logger = logging.getLogger(__name__)


def setup_cfg(args, setup: bool = True):
    """The frozen config of a ``tools/train_net.py`` command line (``args.config_file``,
    ``args.opts``; paths relative to the yaml that names them), its MODEL.DEVICE checked before
    anything is built; ``setup`` also runs Detectron2's ``default_setup`` and nst_det's logger."""
    cfg = load_nst_cfg(args.config_file, args.opts)
    check_device(cfg.MODEL.DEVICE)
    if setup:
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nst_det")
    return cfg


class DistillTrainer(DefaultTrainer):
    """DefaultTrainer for plain and distilled detectors: VOC/COCO evaluators by data set type,
    atomic checkpoints that resume exactly, a stop at a non-finite loss term, and unusable
    training images skipped."""

    def __init__(self, cfg):
        check_num_classes(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
        super().__init__(cfg)
        self._trainer = as_train_loop(self._trainer)

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this right after making self.checkpointer.
        self.checkpointer = AtomicDetectionCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            weights_check="partial" if self.cfg.MODEL.ALLOW_PARTIAL_WEIGHTS else "most")
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        """Load MODEL.WEIGHTS or, with ``resume``, the newest readable checkpoint of OUTPUT_DIR,
        and continue its data stream and random state."""
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            self._trainer.resume_data(self.start_iter)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def state_dict(self):
        # Detectron2 v0.6's DefaultTrainer saves only the iteration and the hooks: the optimizer
        # (its momentum and the current lr) would start afresh on --resume. Save it as later
        # Detectron2 versions do.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # (later Detectron2 versions load it already: harmless)
            self._trainer.load_state_dict(state_dict["_trainer"])

    def train(self):
        """Train; returns the final evaluation results ({data set: {task: metrics}} or, for one
        test set, {task: metrics}) or None when no evaluation ran."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_student(cls, cfg, resume: bool = False):
        """The student alone (plain GeneralizedRCNN, no teacher), loaded from MODEL.WEIGHTS or,
        with ``resume``, from the last checkpoint in OUTPUT_DIR."""
        model = cls.build_model(student_cfg(cfg))
        check = "partial" if cfg.MODEL.ALLOW_PARTIAL_WEIGHTS else "complete"
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR, weights_check=check
                                    ).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return model

    @classmethod
    def test_student(cls, cfg, resume: bool = False):
        """Evaluate the student alone on DATASETS.TEST (``--eval-only``)."""
        return cls.test(cfg, cls.build_student(cfg, resume=resume))

    @classmethod
    def test_teacher(cls, cfg):
        """Evaluate the teacher of MODEL.DISTILL alone on the student's DATASETS.TEST, at the
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
