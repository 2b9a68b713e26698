"""Tests of nst_det/evaluation: VOC and COCO evaluators end to end on the generated demo set, and
evaluation of saved COCO-format predictions files."""
import json
import math
import os

import numpy as np
import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from nst_det import _d2_compat
from nst_det.detection.load_config import get_nst_cfg
from nst_det.detection.data import CLASS_NAMES
from nst_det.detection.evaluation import (
    COCO_STAT_NAMES,
    COCODetectionEvaluator,
    VOCDetectionEvaluator,
    build_evaluator,
    evaluate_predictions_file,
)

from distill_testing import registered_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with registered_demo_data(tmp_path_factory.mktemp("datasets"), 2, 12, seed=11) as root:
        yield root


def _ground_truth_as_outputs(dataset_name, keep=lambda cls, k: True):
    """(inputs, outputs) of a perfect detector: each ground-truth box with score 0.9."""
    inputs, outputs = [], []
    for d in DatasetCatalog.get(dataset_name):
        boxes, classes = [], []
        for anno in d["annotations"]:
            cls = anno["category_id"]
            if keep(cls, len([c for c in classes if c == cls])):
                boxes.append(BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS))
                classes.append(cls)
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.full((len(boxes),), 0.9)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inputs.append({"image_id": d["image_id"], "height": d["height"], "width": d["width"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def _evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()["bbox"]


def test_build_evaluator_chooses_by_data_set_type(demo, tmp_path):
    cfg = get_nst_cfg()
    assert type(build_evaluator(cfg, "nst_demo_voc_test")) is VOCDetectionEvaluator
    coco = build_evaluator(cfg, "nst_demo_coco_test", str(tmp_path))
    assert type(coco) is COCODetectionEvaluator
    assert coco._use_fast_impl == _d2_compat.has_compiled_ops()
    MetadataCatalog.get("nst_demo_unknown_type").set(evaluator_type="lvis")
    with pytest.raises(ValueError, match=r"nst_demo_unknown_type.*'lvis'"):
        build_evaluator(cfg, "nst_demo_unknown_type")


def test_voc_evaluator_gives_100_on_perfect_predictions(demo):
    evaluator = VOCDetectionEvaluator("nst_demo_voc_test")
    results = _evaluate(evaluator, *_ground_truth_as_outputs("nst_demo_voc_test"))
    for key in ["AP", "AP50", "AP75", "AP50_11point", "AP50_area"] + [f"AP50-{c}" for c in CLASS_NAMES]:
        assert results[key] == pytest.approx(100.0), key


def test_voc_11point_and_area_metrics_differ_as_defined(demo):
    """Keeping k of the n boxes of one class (all correct) gives recall k/n at precision 1:
    area AP = k/n, 11-point AP = (number of recall points 0, 0.1, ... <= k/n) / 11."""
    records = DatasetCatalog.get("nst_demo_voc_test")
    n = sum(a["category_id"] == 0 for d in records for a in d["annotations"])
    # keep the first box of class 0 in each image
    inputs, outputs = _ground_truth_as_outputs("nst_demo_voc_test", keep=lambda c, k: c != 0 or k == 0)
    k = sum(int((o["instances"].pred_classes == 0).sum()) for o in outputs)
    assert 0 < k < n
    results = _evaluate(VOCDetectionEvaluator("nst_demo_voc_test"), inputs, outputs)
    recall = k / n
    eleven = sum(1 for t in range(11) if t / 10 <= recall + 1e-12) / 11
    assert results["AP50_area"] == pytest.approx(100 * (recall + 2) / 3)  # mean over 3 classes
    assert results["AP50_11point"] == pytest.approx(100 * (eleven + 2) / 3)
    assert results["AP50-circle"] == pytest.approx(100 * eleven)  # the set's 2007 metric
    assert results["AP50-square"] == pytest.approx(100.0)


def test_coco_evaluator_gives_100_on_perfect_predictions(demo, tmp_path):
    evaluator = COCODetectionEvaluator("nst_demo_coco_test", output_dir=str(tmp_path),
                                       use_fast_impl=False)
    results = _evaluate(evaluator, *_ground_truth_as_outputs("nst_demo_coco_test"))
    assert list(results)[:12] == list(COCO_STAT_NAMES)
    for key in ("AP", "AP50", "AP75", "AR100") + tuple(f"AP-{c}" for c in CLASS_NAMES):
        assert results[key] == pytest.approx(100.0), key
    assert math.isnan(results["APl"])  # no large objects in 64 x 80 images
    assert os.path.isfile(tmp_path / "coco_instances_results.json")


def test_predictions_file_of_the_coco_evaluator_evaluates_without_a_model(demo, tmp_path):
    inputs, outputs = _ground_truth_as_outputs("nst_demo_coco_test", keep=lambda c, k: c != 1)
    _evaluate(COCODetectionEvaluator("nst_demo_coco_test", output_dir=str(tmp_path),
                                     use_fast_impl=False), inputs, outputs)
    path = str(tmp_path / "coco_instances_results.json")
    coco = evaluate_predictions_file(path, "nst_demo_coco_test")["bbox"]
    assert list(coco)[:12] == list(COCO_STAT_NAMES)
    assert coco["AP-circle"] == pytest.approx(100.0) and coco["AP-square"] == 0.0
    assert coco["AP"] == pytest.approx(200 / 3)


def test_predictions_file_with_voc_metrics_on_the_voc_set(demo, tmp_path):
    predictions = []
    for d in DatasetCatalog.get("nst_demo_voc_test"):
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            predictions.append({"image_id": d["image_id"], "category_id": a["category_id"],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 0.8})
    path = tmp_path / "voc_predictions.json"
    path.write_text(json.dumps(predictions))
    voc = evaluate_predictions_file(str(path), "nst_demo_voc_test")["bbox"]
    assert voc["AP50"] == pytest.approx(100.0) and voc["AP50-triangle"] == pytest.approx(100.0)
    coco = evaluate_predictions_file(str(path), "nst_demo_voc_test", metric="coco")["bbox"]
    assert coco["AP"] == pytest.approx(100.0)


def test_bad_predictions_files_name_the_problem(demo, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        evaluate_predictions_file(str(tmp_path / "nothing.json"), "nst_demo_voc_test")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": "000013", "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(KeyError, match=r"bad.json.*entry 0 \(image_id '000013'\) lacks "
                                       r"\['category_id'\]"):
        evaluate_predictions_file(str(bad), "nst_demo_voc_test")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"image_id": "999999", "category_id": 0, "bbox": [0, 0, 1, 1],
                                    "score": 1.0}]))
    with pytest.raises(ValueError, match=r"entry 0 \(image_id '999999'\) has image_id '999999', "
                                         r"which is not an image of data set 'nst_demo_voc_test'"):
        evaluate_predictions_file(str(unknown), "nst_demo_voc_test")
    with pytest.raises(KeyError, match="not registered"):
        evaluate_predictions_file(str(unknown), "no_such_set")


def _coco_predictions_of_ground_truth(dataset_name):
    predictions = []
    for d in DatasetCatalog.get(dataset_name):
        for a in d["annotations"]:
            x, y, w, h = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS)
            predictions.append({"image_id": d["image_id"], "category_id": a["category_id"] + 1,
                                "bbox": [x, y, w, h], "score": 0.9})
    return predictions


def test_draw_predictions_puts_truth_beside_predictions(demo, tmp_path):
    from PIL import Image

    from nst_det.detection.evaluation import draw_predictions

    predictions = _coco_predictions_of_ground_truth("nst_demo_coco_test")
    drawn = draw_predictions("nst_demo_coco_test", predictions, str(tmp_path / "with"), max_images=2)
    empty = draw_predictions("nst_demo_coco_test", [], str(tmp_path / "without"), max_images=2)
    assert len(drawn) == 2 and all(p.endswith(".png") for p in drawn)
    with_boxes = np.asarray(Image.open(drawn[0]).convert("RGB")).astype(float)
    without = np.asarray(Image.open(empty[0]).convert("RGB")).astype(float)
    record = DatasetCatalog.get("nst_demo_coco_test")[0]
    raw = np.asarray(Image.open(record["file_name"]).convert("RGB")).astype(float)
    assert with_boxes.shape == (64, 160, 3)  # ground truth | predictions, 64 x 80 each
    difference = lambda a: np.abs(a - raw).mean()  # noqa: E731
    assert difference(without[:, 80:]) < 0.5  # no prediction: the image itself
    assert difference(with_boxes[:, 80:]) > 2 and difference(with_boxes[:, :80]) > 2  # boxes drawn


def test_eval_predictions_tool(demo, tmp_path):
    import importlib.util

    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(_coco_predictions_of_ground_truth("nst_demo_coco_test")))
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "eval_predictions.py")
    spec = importlib.util.spec_from_file_location("eval_predictions", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "metrics.json"
    results = module.main([str(path), "--dataset", "nst_demo_coco_test", "--output", str(out)])
    assert results["AP"] == pytest.approx(100.0)
    assert json.loads(out.read_text())["AR100"] == pytest.approx(100.0)
