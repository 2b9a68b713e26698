#!/usr/bin/env python
"""The cost of the teacher: time, page faults and peak memory of the student's training step, the
teacher's forward, the NST term and the distillation step on the same two images, the student and
the teacher as the config sets them and (unless --config-only) in every other precision and memory
layout the device runs (and the config's teacher with its norms folded the other way). Then
``distillation / student step: X.XX`` (what distilling costs against training the student alone),
the device's best multiply-add rates, the floors of the teacher forward and the NST term (their
multiply-adds at those rates) and ``distillation / student step floor: X.XX``, the least distilling
can add here, the student's mixed-precision speed-up, and as the last two lines
``parts ratio: X.XX`` = distillation step / (student step + teacher forward + NST term) and
``overhead: X.XX`` = distillation step / (student step + teacher forward), each the median of the
rounds' ratios. See nst_det/research/benchmark_distill.py.

    python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 10 --threads 2 MODEL.DEVICE cpu
    python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 5 --threads 2 MODEL.DEVICE cpu DISTILL.TEACHER.PRECISION bf16 DISTILL.TEACHER.CHANNELS_LAST True
    python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --size 320 --iters 5 --threads 1 MODEL.DEVICE cpu

The models run on the config's MODEL.DEVICE (teacher and student alike).
"""
import argparse
import logging

import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from nst_det.detection.load_config import load_nst_cfg
from nst_det.engine.device import check_device
from nst_det.research.benchmark_distill import benchmark_distillation, format_benchmark


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a config of DistillGeneralizedRCNN")
    parser.add_argument("--iters", type=int, default=10,
                        help="timed rounds (medians and the median of the rounds' ratios)")
    parser.add_argument("--size", type=int, default=None,
                        help="image height (default: the config's INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch (default: torch's own choice)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave the C library's malloc as it is (CPU): by default freed memory "
                             "is kept for reuse, as training keeps it (nst_det/engine/cpu_memory.py)")
    parser.add_argument("--config-only", action="store_true",
                        help="measure the student and the teacher only as the config sets them "
                             "(default: also in every other precision and layout of the device)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def main(args):
    cfg = load_nst_cfg(args.config_file, args.opts)
    check_device(cfg.MODEL.DEVICE)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark_distillation(cfg, iters=args.iters, size=args.size,
                                    config_file=args.config_file,
                                    keep_memory=not args.default_malloc,
                                    variants=not args.config_only)
    print(format_benchmark(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(argument_parser().parse_args())
