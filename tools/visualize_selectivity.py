#!/usr/bin/env python
"""Draw the teacher's and the student's L2-normalised channel maps (the most selective channels)
for one validation image, before and after distillation, as a PNG.

    python tools/visualize_selectivity.py --config-file configs/demo/cls_student_nst.yaml \
        --before output/demo_cls/cls_student_seed0/model_final.pth \
        --after output/demo_cls/cls_student_nst_seed0/model_final.pth \
        --output output/demo_cls/selectivity.png DISTILL.TEACHER.WEIGHTS output/demo_cls/teacher/model_final.pth

The teacher comes from the config (DISTILL.TEACHER.NAME / WEIGHTS, DISTILL.TEACHER_FEATURES); --before may be "init".
"""
import argparse

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
from nst_det.classification.visualize import save_selectivity_figure


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--before", default="init",
                        help='student checkpoint before distillation, or "init" (random init)')
    parser.add_argument("--after", required=True, help="student checkpoint after distillation")
    parser.add_argument("--output", default="selectivity.png")
    parser.add_argument("--image-index", type=int, default=0, help="index in the validation set")
    parser.add_argument("--top-k", type=int, default=8, help="channels shown per network")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    path = save_selectivity_figure(args.config_file, args.opts, args.before, args.after,
                                   args.output, image_index=args.image_index, top_k=args.top_k)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
