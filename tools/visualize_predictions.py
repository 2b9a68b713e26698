#!/usr/bin/env python
"""Draw ground truth (left) and predictions (right) of a COCO-format predictions file on the images
of a registered data set, one PNG per image (Detectron2's Visualizer).

    python tools/visualize_predictions.py output/demo_det/student_nst/inference/nst_demo_coco_test/coco_instances_results.json \
        --dataset nst_demo_coco_test --output output/demo_det/pictures --max-images 20
    # a data set of a config's DATASETS.COCO_CUSTOM / DATASETS.VOC_CUSTOM (registered from it)
    python tools/visualize_predictions.py predictions.json --dataset my_voc_test \
        --config-file my_data.yaml --output pictures
"""
import argparse

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from nst_det.detection.evaluation import draw_predictions, load_coco_predictions
from nst_det.detection.load_config import add_config_file_arguments, config_from_arguments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="COCO-format results JSON (list of detections)")
    parser.add_argument("--dataset", required=True, help="registered data set of the images")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-images", type=int, default=None)
    add_config_file_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    config_from_arguments(parser, args)
    paths = draw_predictions(args.dataset, load_coco_predictions(args.predictions), args.output,
                             args.score_threshold, args.max_images)
    print(f"wrote {len(paths)} pictures to {args.output}")
    return paths


if __name__ == "__main__":
    main()
