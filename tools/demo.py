#!/usr/bin/env python
"""nst_det's demo on built-in data (no download; the CPU is enough): both stages, end to end.

1. Classification (tools/demo_cls.py): scikit-learn's bundled handwritten digits; a teacher, then
   the student alone, with NST and with NST + KD over several seeds; a table and the curves.
2. Detection (tools/demo_det.py): the generated shapes set in PASCAL VOC layout and COCO JSON; a
   Faster R-CNN teacher, the student alone and the student distilled with NST; VOC and COCO metrics.

    python tools/demo.py                          # both stages, their default schedules
    python tools/demo.py --stages det --det-iters 100
"""
import argparse
import os
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--stages", nargs="+", default=["cls", "det"], choices=["cls", "det"])
    parser.add_argument("--cls-seeds", type=int, default=3, help="seeds per classification method")
    parser.add_argument("--cls-epochs", type=int, default=None,
                        help="classification epochs of teacher and students (default: the configs')")
    parser.add_argument("--det-iters", type=int, default=None,
                        help="detection student iterations (default: the demo configs')")
    args = parser.parse_args()
    cls_epochs = (["--epochs", str(args.cls_epochs), "--teacher-epochs", str(args.cls_epochs)]
                  if args.cls_epochs else [])

    commands = {
        "cls": [sys.executable, os.path.join(TOOLS, "demo_cls.py"), "--seeds", str(args.cls_seeds),
                "--output-dir", os.path.join(args.output_dir, "cls")] + cls_epochs,
        "det": [sys.executable, os.path.join(TOOLS, "demo_det.py"),
                "--output-dir", os.path.join(args.output_dir, "det")]
        + (["--iters", str(args.det_iters)] if args.det_iters else []),
    }
    start = time.perf_counter()
    for stage in args.stages:
        print(f"\n=== {stage}: {' '.join(commands[stage][1:])}", flush=True)
        subprocess.run(commands[stage], check=True)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {args.output_dir}")


if __name__ == "__main__":
    main()
