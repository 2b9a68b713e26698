"""Pictures of detections: ground truth (left) beside the predictions of a COCO-format predictions
file (right) for the images of a registered data set, drawn with Detectron2's Visualizer."""
import os
from collections import defaultdict
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from nst_det.engine.atomic import atomic_write

from .predictions_eval import contiguous_class_id, dataset_metadata

__all__ = ["predictions_to_instances", "draw_predictions"]


def predictions_to_instances(predictions: List[dict], meta, image_size) -> Instances:
    """Instances (pred_boxes XYXY, scores, pred_classes) of one image's COCO-format predictions."""
    instances = Instances(image_size)
    boxes = [BoxMode.convert(list(p["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for p in predictions]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([float(p["score"]) for p in predictions], dtype=torch.float32)
    instances.pred_classes = torch.tensor(
        [contiguous_class_id(meta, p["category_id"]) for p in predictions], dtype=torch.int64)
    return instances


def draw_predictions(dataset_name: str, predictions: List[dict], output_dir: str,
                     score_threshold: float = 0.5, max_images: Optional[int] = None) -> List[str]:
    """Write ``<output_dir>/<image>.png`` (ground truth | predictions with score >= threshold) for
    the images of ``dataset_name``; returns the paths written."""
    meta = dataset_metadata(dataset_name)
    by_image = defaultdict(list)
    for p in predictions:
        if p["score"] >= score_threshold:
            by_image[str(p["image_id"])].append(p)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:max_images]:
        image = read_image(record["file_name"], format="RGB")
        truth = Visualizer(image, meta).draw_dataset_dict(record).get_image()
        instances = predictions_to_instances(by_image[str(record["image_id"])], meta, image.shape[:2])
        predicted = Visualizer(image, meta).draw_instance_predictions(instances).get_image()
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, f"{name}.png")
        picture = Image.fromarray(np.concatenate([truth, predicted], axis=1))
        atomic_write(path, lambda f: picture.save(f, format="PNG"))
        paths.append(path)
    return paths
