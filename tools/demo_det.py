#!/usr/bin/env python
"""The detection demo on the generated shapes set (made on first use; no download): trains the tiny
teacher once, then, for every seed, the student alone and the student distilled with NST from the
teacher (configs/demo/det_*.yaml) on the CPU; evaluates each with the VOC and the COCO evaluator;
prints a table (mean ± std over the seeds and each seed's value) with the measured task-loss and
loss_nst magnitudes, and writes it to results.md (with the command, the machine and the wall time),
results.json, seeds.png (every seed's result beside the task loss and loss_nst over the
iterations) and selectivity.png (the channel maps of every FPN level, seed 0) in --output-dir.

    python tools/demo_det.py                                 # seed 0, the configs' schedules
    python tools/demo_det.py --seeds 3                       # seeds 0, 1, 2
    python tools/demo_det.py --seeds 3 --nst-weights 2 4 8 16   # the NST student at each weight
    python tools/demo_det.py --seeds 3 --teacher-precisions fp32 bf16   # float32 and bf16 teacher
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

from nst_det.research.demo_det import DEMO_CONFIGS, NST_CONFIG, format_table, run_demo  # noqa: E402
from nst_det.detection.load_config import load_nst_cfg  # noqa: E402
from nst_det.research.selectivity_det import (detection_selectivity,  # noqa: E402
                                           save_detection_selectivity_figure)
from nst_det.research.measure import load_average  # noqa: E402
from nst_det.research.seed_report import write_report  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo_det")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every student run")
    parser.add_argument("--nst-weights", type=float, nargs="+", default=[],
                        help="DISTILL.NST.WEIGHT of each NST variant (default: the config's)")
    parser.add_argument("--teacher-precisions", nargs="+", default=[],
                        choices=["fp32", "bf16", "fp16"],
                        help="the NST student with its teacher in each DISTILL.TEACHER.PRECISION "
                             "(default: the config's, float32)")
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
                       seeds=range(args.seeds), nst_weights=args.nst_weights,
                       teacher_precisions=args.teacher_precisions)
    picture = draw_selectivity(summary, args.output_dir)
    table = format_table(summary)
    report = write_report(os.path.join(args.output_dir, "results.md"), table,
                          time.perf_counter() - start, load_before)
    with open(report, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"table: {report}; seeds and losses: {os.path.join(args.output_dir, 'seeds.png')}; "
          f"channel maps: {picture}")
    return summary


def draw_selectivity(summary, output_dir):
    """output_dir/selectivity.png: the channel maps of every FPN level of the teacher, of the
    student alone and of the first NST student (seed 0) for test image 0, with each level's
    MMD^2 to the teacher."""
    alone = summary["variants"]["student"][0]
    runs = next(r for v, r in summary["variants"].items() if v != "student")
    teacher = os.path.join(output_dir, "teacher", "model_final.pth")
    cfg = load_nst_cfg(os.path.join(DEMO_CONFIGS, NST_CONFIG), [
        "DISTILL.TEACHER.WEIGHTS", teacher] + runs[0]["opts"])
    result = detection_selectivity(cfg, os.path.join(alone["output_dir"], "model_final.pth"),
                                   os.path.join(runs[0]["output_dir"], "model_final.pth"))
    return save_detection_selectivity_figure(cfg, result, os.path.join(output_dir, "selectivity.png"),
                                             top_k=6)


if __name__ == "__main__":
    main()
