"""Detection evaluators of nst_det: PASCAL VOC (AP50 per class, 07 11-point and area AP50) and COCO
(the 12 numbers of pycocotools' summary), chosen by the data set's ``evaluator_type``."""
import contextlib
import logging
import math
import os
import tempfile
from collections import OrderedDict, defaultdict
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.evaluation import pascal_voc_evaluation
from detectron2.structures import Instances
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from nst_det._d2_compat import has_compiled_ops
from nst_det.detection.data.checked import voc_ground_truth
from nst_det.engine.atomic import staged_outputs

__all__ = ["COCO_STAT_NAMES", "ClassMapEvaluator", "VOCDetectionEvaluator", "COCODetectionEvaluator",
           "build_evaluator", "voc_metrics", "coco_summary"]

logger = logging.getLogger(__name__)

# The 12 numbers of pycocotools' COCOeval.summarize() for boxes, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@contextlib.contextmanager
def _checked_ground_truth(anno_file_template: str, image_set_path: str, class_names):
    """Detectron2's ``voc_eval`` reading the ground truth of ``image_set_path`` through
    nst_det.detection.data.checked (the parser training uses too: fractional corners and a missing
    <difficult> accepted, every other problem an error naming the file and the object), each file
    read once, instead of its own ``parse_rec`` (``int('5.5')``, ``None.text``)."""
    truth = voc_ground_truth(anno_file_template, image_set_path, class_names)
    by_file = {anno_file_template.format(i): objects for i, objects in truth.items()}
    original = pascal_voc_evaluation.parse_rec

    def parse_rec(filename):
        if filename in by_file:
            return by_file[filename]
        raise ValueError(f"VOC annotation '{filename}' is not in the image set '{image_set_path}'")

    pascal_voc_evaluation.parse_rec = parse_rec
    try:
        yield
    finally:
        pascal_voc_evaluation.parse_rec = original


def voc_metrics(lines_by_class: Dict[int, List[str]], anno_file_template: str, image_set_path: str,
                class_names: Sequence[str], use_07_metric: bool) -> "OrderedDict[str, float]":
    """VOC metrics (percent) from detections in the devkit's text form, per class id
    (``"<image id> <score> <xmin> <ymin> <xmax> <ymax>"``, 1-based corners).

    ``AP``: mean over IoU 0.50:0.95, ``AP50``/``AP75`` and ``AP50-<class>`` with the data set's
    metric (``use_07_metric``: VOC2007's 11-point one); ``AP50_11point`` and ``AP50_area`` give
    AP50 under both metrics (11-point interpolation, and the area under the precision envelope as
    in VOC2010+).
    """
    aps = defaultdict(list)  # IoU threshold (percent) -> AP per class
    ap50_other = []
    with tempfile.TemporaryDirectory(prefix="nst_det_voc_eval_") as dirname, \
            _checked_ground_truth(anno_file_template, image_set_path, class_names):
        res_file_template = os.path.join(dirname, "{}.txt")
        for cls_id, cls_name in enumerate(class_names):
            with open(res_file_template.format(cls_name), "w") as f:
                f.write("\n".join(lines_by_class.get(cls_id, [])))
            for thresh in range(50, 100, 5):
                _, _, ap = voc_eval(res_file_template, anno_file_template, image_set_path, cls_name,
                                    ovthresh=thresh / 100.0, use_07_metric=use_07_metric)
                aps[thresh].append(ap * 100)
            _, _, ap = voc_eval(res_file_template, anno_file_template, image_set_path, cls_name,
                                ovthresh=0.5, use_07_metric=not use_07_metric)
            ap50_other.append(ap * 100)
    mean = {t: sum(v) / len(v) for t, v in aps.items()}
    mean_other = sum(ap50_other) / len(ap50_other)
    results = OrderedDict(AP=sum(mean.values()) / len(mean), AP50=mean[50], AP75=mean[75])
    results["AP50_11point"] = mean[50] if use_07_metric else mean_other
    results["AP50_area"] = mean_other if use_07_metric else mean[50]
    for name, ap in zip(class_names, aps[50]):
        results[f"AP50-{name}"] = ap
    return results


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """Detectron2's VOC evaluator, reporting also AP50 per class and AP50 under both the VOC2007
    11-point and the area metric (``voc_metrics``)."""

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return
        predictions = defaultdict(list)
        for predictions_per_rank in all_predictions:
            for cls_id, lines in predictions_per_rank.items():
                predictions[cls_id].extend(lines)
        self._logger.info(f"Evaluating {self._dataset_name} with the VOC "
                          f"{2007 if self._is_2007 else 2012} metric (Python devkit port).")
        results = voc_metrics(predictions, self._anno_file_template, self._image_set_path,
                              self._class_names, self._is_2007)
        self._logger.info("VOC results:\n" + create_small_table(results))
        return OrderedDict(bbox=results)


def _silent_logger() -> logging.Logger:
    silent = logging.Logger(f"{__name__}.silent")  # in no hierarchy: reaches no handler
    silent.disabled = True
    return silent


# The ``self`` of Detectron2's ``COCOEvaluator._derive_coco_results``, which uses nothing of its
# evaluator but the logger: a silent one, as nst_det logs its own table of the 12 numbers.
_DERIVE_SELF = SimpleNamespace(_logger=_silent_logger())


def coco_summary(coco_eval, class_names: Optional[Sequence[str]] = None) -> "OrderedDict[str, float]":
    """The 12 summary numbers (percent, NaN when undefined) of a summarized box ``COCOeval`` (None:
    no predictions), and ``AP-<class>`` (IoU 0.50:0.95, all areas, 100 detections) when
    ``class_names`` names more than one class.

    AP, AP50, AP75, APs/m/l and AP per class are Detectron2's
    (``COCOEvaluator._derive_coco_results``); the six recall numbers it leaves out follow APl."""
    if coco_eval is not None and class_names and len(class_names) > 1:
        num_categories = coco_eval.eval["precision"].shape[2]  # [IoU, recall, class, area, dets]
        if num_categories != len(class_names):
            raise ValueError(f"COCO evaluation has {num_categories} categories but the data set "
                             f"names {len(class_names)} classes: {list(class_names)}")
    derived = COCOEvaluator._derive_coco_results(_DERIVE_SELF, coco_eval, "bbox", class_names)
    results = OrderedDict()
    for i, name in enumerate(COCO_STAT_NAMES):
        if name in derived:
            results[name] = derived[name]
        elif coco_eval is None or coco_eval.stats[i] < 0:
            results[name] = math.nan
        else:
            results[name] = float(coco_eval.stats[i] * 100)
    results.update((name, value) for name, value in derived.items() if name not in results)
    return results


class COCODetectionEvaluator(COCOEvaluator):
    """Detectron2's COCO evaluator, reporting for boxes all 12 numbers of pycocotools' summary
    (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) and AP per class (``coco_summary``).

    The files Detectron2's evaluation writes into the output folder (``instances_predictions.pth``,
    ``coco_instances_results.json``) are written into a temporary folder inside it and renamed
    into place once the evaluation succeeded (nst_det.engine.atomic.staged_outputs): a full disk
    is an error naming the file and leaves the previous files intact, never a half-written one."""

    def evaluate(self, img_ids=None):
        final = self._output_dir
        if not final or not comm.is_main_process():
            return super().evaluate(img_ids)
        try:
            with staged_outputs(final) as staging:
                self._output_dir = staging
                return super().evaluate(img_ids)
        finally:
            self._output_dir = final

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if iou_type != "bbox":
            return super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None:
            self._logger.warning("No predictions from the model!")
        results = coco_summary(coco_eval, class_names)
        self._logger.info("Evaluation results for bbox:\n" + create_small_table(
            {k: v for k, v in results.items() if k in COCO_STAT_NAMES}))
        return results


class ClassMapEvaluator(DatasetEvaluator):
    """Another evaluator, given detections whose class ``i`` (the model's) is renamed
    ``mapping[i]`` (the test set's index of the same class name): DATASETS.TEST_CLASS_MAP
    "by_name"."""

    def __init__(self, evaluator, mapping: Sequence[int]):
        self.evaluator = evaluator
        self.mapping = torch.as_tensor(list(mapping), dtype=torch.int64)

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        mapped = []
        for output in outputs:
            if "instances" in output:
                instances = output["instances"]
                renamed = Instances(instances.image_size, **instances.get_fields())
                classes = instances.pred_classes
                renamed.pred_classes = self.mapping.to(classes.device)[classes]
                output = dict(output, instances=renamed)
            mapped.append(output)
        self.evaluator.process(inputs, mapped)

    def evaluate(self):
        return self.evaluator.evaluate()


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None):
    """The evaluator of ``dataset_name`` by its metadata ``evaluator_type``: "pascal_voc" -> VOC,
    "coco" -> COCO (the fast C++ COCOeval only when Detectron2's compiled ops exist)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "pascal_voc":
        return VOCDetectionEvaluator(dataset_name)
    if evaluator_type == "coco":
        return COCODetectionEvaluator(dataset_name, output_dir=output_folder,
                                      use_fast_impl=has_compiled_ops())
    raise ValueError(
        f"no detection evaluator for data set '{dataset_name}' (metadata evaluator_type "
        f"{evaluator_type!r}); nst_det evaluates 'pascal_voc' and 'coco' data sets"
    )
