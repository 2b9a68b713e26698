#!/usr/bin/env python
"""Evaluate a saved COCO-format predictions file against a registered data set, without a model.

    python tools/eval_predictions.py output/demo_det/student_nst/inference/nst_demo_coco_test/coco_instances_results.json \
        --dataset nst_demo_coco_test
    python tools/eval_predictions.py predictions.json --dataset voc_2007_test --metric voc

VOC: AP, AP50, AP75, AP50 per class, AP50 under the 07 11-point and the area metric (Python port of
the devkit). COCO: the 12 numbers of pycocotools' summary and AP per class.
"""
import argparse
import json

import nst_det  # noqa: F401  (first: makes Detectron2 usable on this stack)
import nst_det.data  # noqa: F401  (registers the demo data sets)
from detectron2.utils.logger import create_small_table

from nst_det.evaluation import evaluate_predictions_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="COCO-format results JSON (list of detections)")
    parser.add_argument("--dataset", required=True, help="registered data set, e.g. voc_2007_test")
    parser.add_argument("--metric", choices=["auto", "voc", "coco"], default="auto",
                        help="auto: by the data set's evaluator_type")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    results = evaluate_predictions_file(args.predictions, args.dataset, args.metric)["bbox"]
    print(f"{args.predictions} on {args.dataset}:")
    print(create_small_table({k: v for k, v in results.items() if "-" not in k}))
    per_class = {k: v for k, v in results.items() if "-" in k}
    if per_class:
        print(create_small_table(per_class))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
