#!/usr/bin/env python
"""Draw the teacher's and the student's L2-normalised channel maps (the most selective channels)
for one image, the student before and after distillation, with each student's NST loss (MMD^2,
the config's DISTILL.NST kernel) to the teacher, as a PNG.

Classification (one tapped layer; image --image-index of the validation set; the teacher from
DISTILL.TEACHER.NAME / WEIGHTS, DISTILL.TEACHER_FEATURES):

    python tools/visualize_selectivity.py --config-file configs/demo/cls_student_nst.yaml \
        --before output/demo_cls/cls_student_seed0/model_final.pth \
        --after output/demo_cls/cls_student_nst_seed0/model_final.pth \
        --output output/demo_cls/selectivity.png DISTILL.TEACHER.WEIGHTS output/demo_cls/teacher/model_final.pth

Detection (every matched FPN level, DISTILL.STUDENT_FEATURES / TEACHER_FEATURES: a block of rows
teacher / student alone / student + NST per level; image --image-index of the first DATASETS.TEST
set, or any image file with --image; the teacher from DISTILL.TEACHER.CONFIG / WEIGHTS):

    python tools/visualize_selectivity.py --config-file configs/demo/det_student_nst.yaml \
        --before output/demo_det/student/seed0/model_final.pth \
        --after output/demo_det/student_nst/seed0/model_final.pth \
        --output output/demo_det/selectivity.png \
        DISTILL.TEACHER.WEIGHTS output/demo_det/teacher/model_final.pth

The stage is the config file's: detection when nst_det.detection.load_config.load_nst_cfg reads it,
classification when nst_det.classification.config.load_cls_config does (each refuses a key it does
not define); a file both read or neither is an error. --before may be "init" (random
initialisation). Models run on MODEL.DEVICE (the demo configs: cpu).
"""
import argparse
import contextlib
import logging

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
from nst_det.classification.config import load_cls_config
from nst_det.research.selectivity_cls import save_selectivity_figure
from nst_det.detection.load_config import load_nst_cfg
from nst_det.research.selectivity_det import detection_selectivity, save_detection_selectivity_figure

STAGE_LOADERS = {"detection": load_nst_cfg, "classification": load_cls_config}


@contextlib.contextmanager
def _quiet_detectron2_config():
    """Detectron2 warns that a yaml has no VERSION before it refuses a classification yaml's keys:
    silence that while the stage is found."""
    config_logger = logging.getLogger("detectron2.config.compat")
    level = config_logger.level
    config_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        config_logger.setLevel(level)


def config_stage(config_file: str) -> str:
    """"detection" or "classification": the stage whose loader reads ``config_file`` (with its
    ``_BASE_`` chain, before any override); each loader refuses a key it does not define with a
    KeyError. A file both stages read (only keys they share) or neither is a ValueError naming it;
    a missing file a FileNotFoundError."""
    accepted, refusals = [], {}
    for stage, load in STAGE_LOADERS.items():
        try:
            with _quiet_detectron2_config():
                load(config_file)
            accepted.append(stage)
        except KeyError as e:
            refusals[stage] = e.args[0] if e.args else e
    if len(accepted) == 1:
        return accepted[0]
    if accepted:
        raise ValueError(
            f"config file '{config_file}' sets only keys that both stages have, so it is neither "
            f"clearly a detection config nor a classification one: give one with a key of its "
            f"stage (e.g. MODEL.META_ARCHITECTURE for detection, DATA.NAME for classification)")
    raise ValueError(
        f"config file '{config_file}' is neither a detection config (load_nst_cfg: "
        f"{refusals['detection']}) nor a classification config (load_cls_config: "
        f"{refusals['classification']})")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--before", default="init",
                        help='student checkpoint before distillation (detection: the student '
                             'trained alone), or "init" (random init)')
    parser.add_argument("--after", required=True,
                        help="student checkpoint after distillation (the NST student)")
    parser.add_argument("--output", default="selectivity.png")
    parser.add_argument("--image-index", type=int, default=0,
                        help="index in the validation set (detection: the first DATASETS.TEST)")
    parser.add_argument("--image", default="", metavar="PATH",
                        help="detection only: an image file instead of --image-index")
    parser.add_argument("--top-k", type=int, default=8, help="channels shown per network")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if args.top_k < 1:
        parser.error(f"--top-k is {args.top_k}: it must be at least 1")

    stage = config_stage(args.config_file)
    if stage == "classification":
        if args.image:
            parser.error(f"--image is for detection configs; '{args.config_file}' is a "
                         f"classification config (use --image-index)")
        path = save_selectivity_figure(args.config_file, args.opts, args.before, args.after,
                                       args.output, image_index=args.image_index, top_k=args.top_k)
    else:
        cfg = load_nst_cfg(args.config_file, args.opts)
        result = detection_selectivity(cfg, args.before, args.after,
                                       image_index=args.image_index, image_file=args.image)
        path = save_detection_selectivity_figure(cfg, result, args.output, top_k=args.top_k)
        print(f"image {result.image_file}")
        for level in result.levels:
            print(f"level {level.student_feature} (teacher {level.teacher_feature}): MMD² to the "
                  f"teacher: student alone {level.mmd2_before:.6f}, "
                  f"student + NST {level.mmd2_after:.6f}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
