#!/usr/bin/env python
"""Train or evaluate a Faster R-CNN, plain or distilled with NST from a teacher (Detectron2 style).

    python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml
    python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --eval-only --eval-teacher
    python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --resume
    python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --num-gpus 8

Without a GPU, pass MODEL.DEVICE cpu; --num-gpus N then runs N CPU processes on gloo.
"""
import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from detectron2.engine import default_argument_parser

from nst_det.classification.config import get_cls_config
from nst_det.detection.trainer import DistillTrainer, setup_cfg
from nst_det.engine.launch import launch


def main(args):
    # get_cfg + add_nst_config + file + opts (a classification config named as such), MODEL.DEVICE
    # checked; logging
    cfg = setup_cfg(args, classification_defaults=get_cls_config)
    if args.eval_only:
        if args.eval_teacher:
            return DistillTrainer.test_teacher(cfg)
        return DistillTrainer.test_student(cfg, resume=args.resume)
    if args.eval_teacher:
        raise ValueError("--eval-teacher goes with --eval-only")
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--eval-teacher", action="store_true",
                        help="with --eval-only: evaluate the teacher of DISTILL alone")
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
