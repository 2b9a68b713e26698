"""Evaluate a saved COCO-format predictions file against a registered data set, without a model.

The file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, as
Detectron2's COCO evaluator writes it (``inference/<data set>/coco_instances_results.json``):
image ids and category ids as in the data set's COCO form (its JSON, or Detectron2's conversion
of it: VOC file ids and contiguous class ids for VOC sets).
"""
import contextlib
import io
import json
import os
import tempfile
from collections import OrderedDict, defaultdict
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .evaluators import coco_summary, voc_metrics

__all__ = ["load_coco_predictions", "dataset_metadata", "contiguous_class_id",
           "evaluate_predictions_voc", "evaluate_predictions_coco", "evaluate_predictions_file"]

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def load_coco_predictions(path: str) -> List[dict]:
    """The predictions of a COCO-format results file, checked for the keys every entry needs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"predictions file '{path}' does not exist")
    with open(path) as f:
        try:
            predictions = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"predictions file '{path}' is not valid JSON: {e}") from e
    if not isinstance(predictions, list):
        raise ValueError(f"predictions file '{path}' must hold a JSON list of detections, "
                         f"found {type(predictions).__name__}")
    for i, p in enumerate(predictions):
        missing = [k for k in _REQUIRED_KEYS if k not in p]
        if missing:
            raise KeyError(f"predictions file '{path}': entry {i} lacks {missing} "
                           f"(needs {list(_REQUIRED_KEYS)})")
        if len(p["bbox"]) != 4:
            raise ValueError(f"predictions file '{path}': entry {i} has bbox {p['bbox']}, "
                             "expected [x, y, w, h]")
    return predictions


def dataset_metadata(dataset_name: str):
    """Metadata of a registered data set; KeyError listing the registered ones otherwise."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"data set '{dataset_name}' is not registered; registered: "
                       f"{sorted(DatasetCatalog.list())}")
    return MetadataCatalog.get(dataset_name)


def contiguous_class_id(meta, category_id: int) -> int:
    """The model's class index (0..K-1) of a predictions file's ``category_id``."""
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping is None:
        contiguous = int(category_id)
    elif category_id in mapping:
        contiguous = mapping[category_id]
    else:
        raise ValueError(f"prediction has category_id {category_id}, not one of the data set's "
                         f"{sorted(mapping)}")
    if not 0 <= contiguous < len(meta.thing_classes):
        raise ValueError(f"prediction has category_id {category_id} but the data set has "
                         f"{len(meta.thing_classes)} classes")
    return contiguous


def evaluate_predictions_voc(predictions: List[dict], dataset_name: str) -> "OrderedDict[str, float]":
    """VOC metrics (``voc_metrics``) of COCO-format predictions on a VOC-layout data set."""
    meta = dataset_metadata(dataset_name)
    for key in ("dirname", "split", "year"):
        if not meta.get(key, None):
            raise ValueError(f"data set '{dataset_name}' is not in VOC layout (metadata lacks "
                             f"'{key}'); evaluate it with the COCO metric")
    image_set = os.path.join(meta.dirname, "ImageSets", "Main", f"{meta.split}.txt")
    with open(image_set) as f:
        image_ids = {line.strip() for line in f if line.strip()}
    lines = defaultdict(list)
    for p in predictions:
        image_id = str(p["image_id"])
        if image_id not in image_ids:
            raise ValueError(f"prediction for image '{image_id}', which is not in {image_set}")
        x, y, w, h = p["bbox"]
        # the VOC devkit's 1-based corners, as Detectron2's VOC evaluator writes them
        lines[contiguous_class_id(meta, p["category_id"])].append(
            f"{image_id} {p['score']:.3f} {x + 1:.1f} {y + 1:.1f} {x + w:.1f} {y + h:.1f}")
    anno_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
    return voc_metrics(lines, anno_template, image_set, meta.thing_classes, meta.year == 2007)


def evaluate_predictions_coco(predictions: List[dict], dataset_name: str,
                              cache_dir: Optional[str] = None) -> "OrderedDict[str, float]":
    """The 12 COCO numbers and AP per class of COCO-format predictions (pycocotools' COCOeval)."""
    meta = dataset_metadata(dataset_name)
    with tempfile.TemporaryDirectory(prefix="nst_det_coco_gt_") as tmp:
        json_file = meta.get("json_file", None)
        if json_file is None:  # e.g. a VOC set: Detectron2's conversion to COCO form
            json_file = os.path.join(cache_dir or tmp, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, json_file, allow_cached=cache_dir is not None)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(json_file)
    known_images = set(coco_gt.getImgIds())
    unknown = sorted({str(p["image_id"]) for p in predictions} - {str(i) for i in known_images})
    if unknown:
        raise ValueError(f"predictions name {len(unknown)} image(s) not in '{dataset_name}', e.g. "
                         f"{unknown[:5]}")
    if not predictions:
        return coco_summary(None)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_dt = coco_gt.loadRes(predictions)
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_summary(coco_eval, meta.thing_classes)


def evaluate_predictions_file(path: str, dataset_name: str, metric: str = "auto"
                              ) -> "OrderedDict[str, OrderedDict]":
    """{"bbox": metrics} of the predictions file ``path`` on ``dataset_name``; ``metric`` is
    "voc", "coco" or "auto" (the data set's ``evaluator_type``)."""
    meta = dataset_metadata(dataset_name)
    if metric == "auto":
        metric = {"pascal_voc": "voc", "coco": "coco"}.get(meta.get("evaluator_type", None), "coco")
    predictions = load_coco_predictions(path)
    if metric == "voc":
        results = evaluate_predictions_voc(predictions, dataset_name)
    elif metric == "coco":
        results = evaluate_predictions_coco(predictions, dataset_name)
    else:
        raise ValueError(f"metric must be 'voc', 'coco' or 'auto', got {metric!r}")
    return OrderedDict(bbox=results)
