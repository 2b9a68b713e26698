#!/usr/bin/env python
"""Train or evaluate a detector of a LazyConfig ``.py`` file, plain or distilled with NST from a
frozen teacher (the shape of Detectron2's tools/lazyconfig_train_net.py, on nst_det's engine).

    python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py --resume
    python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py --eval-only \
        train.init_checkpoint=output/lazy/voc_frcnn_R50_nst/model_final.pth
    python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py --num-gpus 8 \
        distill.NST.WEIGHT=8 train.max_iter=20000

Overrides are ``key=value`` (Detectron2's LazyConfig.apply_overrides). The config's sections:
``model`` (a student wrapped by nst_det.detection.lazy.distill_model, or any model),
``distill`` (the DISTILL settings), ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier``, ``train`` (output_dir, max_iter, checkpointer.period, eval_period, log_period,
device, init_checkpoint, amp.enabled, seed). ``--eval-only`` evaluates the student alone. Without
a GPU pass train.device=cpu; --num-gpus N then runs N CPU processes on gloo.
"""
import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from detectron2.engine import default_argument_parser

from nst_det.detection.lazy_trainer import LazyTrainer, build_lazy_student, do_test, setup_lazy_cfg
from nst_det.engine.launch import launch


def main(args):
    cfg = setup_lazy_cfg(args)  # LazyConfig.load + overrides, checked; logging
    if args.eval_only:
        return do_test(cfg, build_lazy_student(cfg, resume=args.resume))
    trainer = LazyTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    return default_argument_parser()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
