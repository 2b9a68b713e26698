#!/usr/bin/env python
"""The detection demo on the generated shapes set (made on first use; no download): trains the tiny
teacher, the student alone and the student distilled with NST from the teacher
(configs/demo/det_*.yaml) on the CPU, evaluates each with the VOC and the COCO evaluator, and prints
a table (teacher, student, student + NST) with the measured task-loss and loss_nst magnitudes.

    python tools/demo_det.py                    # the configs' schedules
    python tools/demo_det.py --iters 100        # shorter: student iterations (teacher scaled alike)
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a busy CPU spinning threads slow the small
# convolutions of the demo down many times (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import nst_det.detection  # noqa: E402,F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from nst_det.detection.demo import format_table, run_demo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo_det")
    parser.add_argument("--iters", type=int, default=None,
                        help="student iterations (default: the configs'); the teacher's scale alike")
    parser.add_argument("--datasets-root", default=None,
                        help="data sets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(args.output_dir)
    setup_logger(args.output_dir, name="nst_det", abbrev_name="nst_det")
    start = time.perf_counter()
    summary = run_demo(args.output_dir, student_iters=args.iters, datasets_root=args.datasets_root)
    print(format_table(summary))
    print(f"wall time: {time.perf_counter() - start:.0f} s; results: "
          f"{os.path.join(args.output_dir, 'results.json')}")
    return summary


if __name__ == "__main__":
    main()
