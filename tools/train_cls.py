#!/usr/bin/env python
"""Train or evaluate a classification student, alone or distilled from a teacher (NST, KD, AT,
FitNet and their sums): the first stage of nst_det.

    python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --num-gpus 8
    python tools/train_cls.py --config-file configs/demo/cls_student_nst.yaml --resume
    python tools/train_cls.py --config-file CONFIG --eval-only MODEL.STUDENT.WEIGHTS model.pth
    torchrun --nproc_per_node 8 tools/train_cls.py --config-file CONFIG

The config is checked before anything is built or any process starts: MODEL.DEVICE is "cuda" by
default and, without a GPU, must be given as `MODEL.DEVICE cpu` (the configs/demo ones say so).
Without a GPU, --num-gpus N runs N CPU processes on the gloo backend. --eval-only builds the
student alone (no teacher file needed) unless --eval-teacher.
"""
import logging

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
from detectron2.engine import default_argument_parser

from nst_det.classification.config import load_cls_config
from nst_det.classification.trainer import ClsTrainer, default_cls_setup
from nst_det.engine.checkpointer import check_eval_weights
from nst_det.engine.launch import launch
from nst_det.engine.device import check_device


def detection_defaults():
    """The detection stage's default config: a detection yaml given to this tool is named as such
    (built only when the yaml has keys the classification stage lacks)."""
    from nst_det.detection.load_config import get_nst_cfg

    return get_nst_cfg()


def load_config(args):
    """Config from --config-file and the KEY VALUE overrides, its MODEL.DEVICE checked (a
    ValueError saying to pass `MODEL.DEVICE cpu` when it asks for CUDA and there is none); with
    --eval-only, a ValueError naming MODEL.STUDENT.WEIGHTS / OUTPUT_DIR when no student weights
    would be loaded."""
    cfg = load_cls_config(args.config_file, args.opts, detection_defaults=detection_defaults)
    check_device(cfg.MODEL.DEVICE)
    if getattr(args, "eval_only", False) and not getattr(args, "eval_teacher", False):
        # no score for a student with random weights
        check_eval_weights(cfg.MODEL.STUDENT.WEIGHTS, "MODEL.STUDENT.WEIGHTS", cfg.OUTPUT_DIR,
                           getattr(args, "resume", False))
    return cfg


def main(args, cfg):
    """One process of the job: ``cfg`` is the config that :func:`load_config` loaded and checked
    once, before any process started; Detectron2's setup (nst_det.classification.trainer.
    default_cls_setup: logging, config.yaml in OUTPUT_DIR, seed), then training or evaluation."""
    default_cls_setup(cfg, args)
    trainer = ClsTrainer(cfg, eval_only=args.eval_only,
                         eval_teacher=args.eval_only and args.eval_teacher)
    trainer.resume_or_load(resume=args.resume)
    if args.eval_only:
        which = "teacher" if args.eval_teacher else "student"
        metrics = trainer.evaluate(teacher=args.eval_teacher)
        logging.getLogger("nst_det").info(f"{which} on {cfg.DATA.NAME} val: top-1 "
                                          f"{metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%")
        return metrics
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--eval-teacher", action="store_true",
                        help="with --eval-only: evaluate the configured teacher, not the student")
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    cfg = load_config(args)  # a bad config or MODEL.DEVICE stops here, before any process starts
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, cfg))
