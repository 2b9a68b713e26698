#!/usr/bin/env python
"""The classification demo on scikit-learn's bundled handwritten digits (real images, no download).

Trains the demo teacher once, then the demo student alone, with NST and with NST + KD over several
seeds; prints a table of student validation top-1 (mean +- std) beside the teacher's, and saves the
accuracy curves (curves.png) and a picture of the channel maps (selectivity.png) in --output-dir.

    python tools/demo_cls.py                       # 3 seeds, the configs' epochs
    python tools/demo_cls.py --seeds 5 --methods "student alone" "NST (poly)" KD AT
"""
import argparse
import logging
import os
import time

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
import torch
from detectron2.utils.logger import setup_logger

from nst_det.classification.demo import DEMO_METHODS, format_table, plot_curves, run_demo
from nst_det.classification.visualize import save_selectivity_figure


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo_cls")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    parser.add_argument("--epochs", type=int, default=None,
                        help="student epochs (default: the configs'); the lr drops at 3/4")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["student alone", "NST (poly)",
                                                          "NST (poly) + KD"],
                        choices=list(DEMO_METHODS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (small nets run best on 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(args.output_dir, name="nst_det", abbrev_name="nst_det")
    logging.getLogger("nst_det.classification.engine").setLevel(logging.WARNING)
    start = time.perf_counter()
    results = run_demo(args.output_dir, methods=args.methods, seeds=range(args.seeds),
                       epochs=args.epochs, teacher_epochs=args.teacher_epochs)
    curves = plot_curves(results, os.path.join(args.output_dir, "curves.png"))
    picture = None
    nst = results["runs"].get("NST (poly)")
    alone = results["runs"].get("student alone")
    if nst and alone:
        picture = save_selectivity_figure(
            os.path.join(nst_det.classification.demo.DEMO_CONFIGS, "cls_student_nst.yaml"),
            ["DISTILL.TEACHER.WEIGHTS", results["teacher_weights"]],
            before=os.path.join(alone[0]["output_dir"], "model_final.pth"),
            after=os.path.join(nst[0]["output_dir"], "model_final.pth"),
            path=os.path.join(args.output_dir, "selectivity.png"))
    print(format_table(results))
    print(f"curves: {curves}" + (f"; channel maps: {picture}" if picture else ""))
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
