#!/usr/bin/env python
"""The detection demo on the generated shapes set (made on first use; no download): trains the tiny
teacher once, then, for every seed, the student alone and the student distilled with NST from the
teacher (configs/demo/det_*.yaml) on the CPU; evaluates each with the VOC and the COCO evaluator;
prints a table (mean ± std over the seeds and each seed's value) with the measured task-loss and
loss_nst magnitudes, and writes it to results.md, results.json and seeds.png in --output-dir.

    python tools/demo_det.py                                 # seed 0, the configs' schedules
    python tools/demo_det.py --seeds 3                       # seeds 0, 1, 2
    python tools/demo_det.py --seeds 3 --nst-weights 2 4 8 16   # the NST student at each weight
    python tools/demo_det.py --iters 100                     # shorter: student iterations

A rerun with the same arguments and --threads prints the same numbers on the same machine.
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
from nst_det.engine.measure import load_average  # noqa: E402
from nst_det.engine.seed_report import write_report  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo_det")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every student run")
    parser.add_argument("--nst-weights", type=float, nargs="+", default=[],
                        help="DISTILL.NST.WEIGHT of each NST variant (default: the config's)")
    parser.add_argument("--iters", type=int, default=None,
                        help="student iterations (default: the configs'); the teacher's scale alike")
    parser.add_argument("--datasets-root", default=None,
                        help="data sets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (the numbers depend on it; documented runs: 2)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(args.output_dir)
    setup_logger(args.output_dir, name="nst_det", abbrev_name="nst_det")
    load_before, start = load_average(), time.perf_counter()
    summary = run_demo(args.output_dir, student_iters=args.iters, datasets_root=args.datasets_root,
                       seeds=range(args.seeds), nst_weights=args.nst_weights)
    table = format_table(summary)
    report = write_report(os.path.join(args.output_dir, "results.md"), table,
                          time.perf_counter() - start, load_before)
    with open(report, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"table: {report}; picture: {os.path.join(args.output_dir, 'seeds.png')}")
    return summary


if __name__ == "__main__":
    main()
