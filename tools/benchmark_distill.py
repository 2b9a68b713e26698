#!/usr/bin/env python
"""The cost of the teacher: time and peak memory of the student's training step, the teacher's
forward and the distillation step on the same two images; the last line is ``overhead: X.XX``
= distillation step / (student step + teacher forward). See nst_det/engine/benchmark.py.

    python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --size 320 --iters 5 --threads 1
"""
import argparse
import logging

import torch

import nst_det  # noqa: F401  (first: makes Detectron2 usable here and registers nst_det's models)
from nst_det.config import get_nst_cfg
from nst_det.engine.benchmark import benchmark_distillation, format_benchmark


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a config of DistillGeneralizedRCNN")
    parser.add_argument("--iters", type=int, default=10, help="timed rounds (the fastest is reported)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=None,
                        help="image height (default: the config's INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch (default: torch's own choice)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def main(args):
    cfg = get_nst_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark_distillation(cfg, iters=args.iters, device=args.device, size=args.size,
                                    config_file=args.config_file)
    print(format_benchmark(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(argument_parser().parse_args())
