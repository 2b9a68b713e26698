#!/usr/bin/env python
"""The classification demo on scikit-learn's bundled handwritten digits (real images, no download).

Trains the demo teacher once, then the demo student alone, with NST, with KD and with NST + KD over
several seeds; prints a table of student validation top-1 (mean ± std and each seed's value) beside the
teacher's, with the differences that say whether a term helps, and writes it to results.md
(with the command, the machine and the wall time), the accuracy curves (curves.png), every seed's
result beside the loss curves (seeds.png) and a picture of the channel maps (selectivity.png) in
--output-dir. KEY VALUE pairs at the end override the students' configs, and those of DATA.* and
MODEL.DEVICE the teacher's too (after --methods, put -- before them).

    python tools/demo_cls.py                       # 3 seeds, the configs' epochs
    python tools/demo_cls.py --seeds 5 --methods "student alone" "NST (poly)" KD AT
    python tools/demo_cls.py --nst-weights 5 20 50     # each NST method at each weight
    python tools/demo_cls.py DISTILL.NST.KERNEL gaussian
    python tools/demo_cls.py --methods "student alone" AT -- DISTILL.AT.WEIGHT 100.0

A rerun with the same arguments and --threads prints the same numbers on the same machine.
"""
import argparse
import logging
import os
import time

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
import torch
from detectron2.utils.logger import setup_logger

from nst_det.research.demo_cls import (DEFAULT_METHODS, DEMO_CONFIGS, DEMO_METHODS,
                                         format_table, plot_curves, plot_seeds, run_demo)
from nst_det.research.selectivity_cls import save_selectivity_figure
from nst_det.research.measure import load_average
from nst_det.research.seed_report import write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo_cls")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    parser.add_argument("--epochs", type=int, default=None,
                        help="student epochs (default: the configs'); the lr drops at 3/4")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        choices=list(DEMO_METHODS))
    parser.add_argument("--nst-weights", type=float, nargs="+", default=[],
                        help="DISTILL.NST.WEIGHT of each NST run (default: the configs')")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (small nets run best on 1; the numbers depend on it)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs overriding the students' configs (DATA.* and "
                             "MODEL.DEVICE the teacher's too); after --methods, separate them with --")
    args = parser.parse_args()
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")

    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(args.output_dir, name="nst_det", abbrev_name="nst_det")
    logging.getLogger("nst_det.classification.trainer").setLevel(logging.WARNING)
    load_before, start = load_average(), time.perf_counter()
    results = run_demo(args.output_dir, methods=args.methods, seeds=range(args.seeds),
                       epochs=args.epochs, teacher_epochs=args.teacher_epochs, opts=args.opts,
                       nst_weights=args.nst_weights)
    curves = plot_curves(results, os.path.join(args.output_dir, "curves.png"))
    seeds = plot_seeds(results, os.path.join(args.output_dir, "seeds.png"))
    picture = None
    nst = next((runs for m, runs in results["runs"].items()
                if m.startswith("NST") and "KD" not in m), None)
    alone = results["runs"].get("student alone")
    if nst and alone:
        picture = save_selectivity_figure(
            os.path.join(DEMO_CONFIGS, "cls_student_nst.yaml"),
            list(args.opts) + ["DISTILL.TEACHER.WEIGHTS", results["teacher_weights"]],
            before=os.path.join(alone[0]["output_dir"], "model_final.pth"),
            after=os.path.join(nst[0]["output_dir"], "model_final.pth"),
            path=os.path.join(args.output_dir, "selectivity.png"))
    report = write_report(os.path.join(args.output_dir, "results.md"), format_table(results),
                          time.perf_counter() - start, load_before)
    with open(report, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"table: {report}; curves: {curves}; seeds and losses: {seeds}"
          + (f"; channel maps: {picture}" if picture else ""))


if __name__ == "__main__":
    main()
