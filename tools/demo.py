#!/usr/bin/env python
"""nst_det's demo on built-in data (no download; the CPU is enough): both stages, end to end.

1. Classification (tools/demo_cls.py): scikit-learn's bundled handwritten digits; a teacher, then
   the student alone, with NST, with KD and with NST + KD over several seeds; a table, the curves,
   every seed's result beside the loss curves, the channel maps.
2. Detection (tools/demo_det.py): the generated shapes set in PASCAL VOC layout and COCO JSON; a
   Faster R-CNN teacher, the student alone and the student distilled with NST (for each seed);
   VOC and COCO metrics, every seed's result beside the loss curves, the channel maps per level.

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
    parser.add_argument("--det-seeds", type=int, default=1, help="seeds per detection student")
    args = parser.parse_args()
    cls_epochs = (["--epochs", str(args.cls_epochs), "--teacher-epochs", str(args.cls_epochs)]
                  if args.cls_epochs else [])

    commands = {
        "cls": [sys.executable, os.path.join(TOOLS, "demo_cls.py"), "--seeds", str(args.cls_seeds),
                "--output-dir", os.path.join(args.output_dir, "cls")] + cls_epochs,
        "det": [sys.executable, os.path.join(TOOLS, "demo_det.py"), "--seeds", str(args.det_seeds),
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
