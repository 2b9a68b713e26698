#!/usr/bin/env python
r"""Evaluate a saved COCO-format predictions file against a data set, without a model.

    # a registered data set
    python tools/eval_predictions.py output/demo_det/student_nst/inference/nst_demo_coco_test/coco_instances_results.json \
        --dataset nst_demo_coco_test
    python tools/eval_predictions.py predictions.json --dataset voc_2007_test --metric voc
    # a COCO ground-truth JSON that is not registered (images are not read; --image-root optional)
    python tools/eval_predictions.py predictions.json --gt annotations/instances_val.json \
        [--image-root images/val]
    # a folder in PASCAL VOC layout (Annotations/, ImageSets/Main/<split>.txt, JPEGImages/)
    python tools/eval_predictions.py predictions.json --voc-root $DETECTRON2_DATASETS/VOC2007 \
        --split test [--year 2007] [--classes a,b,c]

    # a data set of a config's DATASETS.COCO_CUSTOM / DATASETS.VOC_CUSTOM (registered from it)
    python tools/eval_predictions.py predictions.json --dataset my_coco_val --config-file my_data.yaml

Give exactly one of --dataset, --gt, --voc-root. The predictions file is a JSON list of
{"image_id", "category_id", "bbox": [x, y, w, h], "score"} as Detectron2's COCO evaluator writes
it (coco_instances_results.json): image and category ids as in the data set's COCO form (VOC
folders: the file ids, as strings, and class indices 0..K-1). Every entry is checked first; a bad
entry (unknown image or category id, empty or non-finite box, non-numeric score, ...) is an error
naming it, never a score.

--voc-root: the 20 VOC classes unless --classes is given; --year 2007 (11-point metric) when the
folder's name says VOC2007, else 2012.

Prints one table of the metrics (--output: also as JSON). VOC: AP, AP50, AP75, AP50 per class,
AP50 under the 07 11-point and the area metric (Python port of the devkit). COCO: the 12 numbers
of pycocotools' summary and AP per class.
"""
import argparse
import itertools

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from tabulate import tabulate

from nst_det.detection.evaluation import dataset_description, evaluate_predictions_file, predictions_dataset
from nst_det.detection.load_config import add_config_file_arguments, config_from_arguments
from nst_det.engine.atomic import atomic_write_json


def metrics_table(results, pairs: int = 3) -> str:
    """One table of all metrics, ``pairs`` (metric, value) pairs a row, as Detectron2's COCO
    evaluator prints AP per category."""
    flat = list(itertools.chain(*results.items()))
    columns = min(2 * pairs, len(flat))
    rows = itertools.zip_longest(*[flat[i::columns] for i in range(columns)])
    return tabulate(rows, tablefmt="pipe", floatfmt=".3f", numalign="left",
                    headers=["metric", "value"] * (columns // 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="COCO-format results JSON (list of detections)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="registered data set, e.g. voc_2007_test")
    source.add_argument("--gt", help="COCO-format ground-truth JSON (instances_*.json)")
    source.add_argument("--voc-root", help="folder in PASCAL VOC layout, e.g. .../VOC2007")
    parser.add_argument("--image-root", help="with --gt: the images' folder (default: the JSON's)")
    parser.add_argument("--split", help="with --voc-root: ImageSets/Main/<split>.txt, default test")
    parser.add_argument("--year", type=int, help="with --voc-root: VOC year (2007: 11-point AP)")
    parser.add_argument("--classes", help="with --voc-root: class names a,b,c (default: VOC's 20)")
    parser.add_argument("--metric", choices=["auto", "voc", "coco"], default="auto",
                        help="auto: by the data set's evaluator_type")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    add_config_file_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    config_from_arguments(parser, args)
    dataset_name = predictions_dataset(args.dataset, args.gt, args.voc_root, args.image_root,
                                       args.split, args.year, args.classes)
    results = evaluate_predictions_file(args.predictions, dataset_name, args.metric)["bbox"]
    print(f"{args.predictions} on {dataset_description(dataset_name)}:")
    print(metrics_table(results))
    if args.output:
        atomic_write_json(results, args.output, indent=2)  # never a half-written file
    return results


if __name__ == "__main__":
    main()
