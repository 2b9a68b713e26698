"""Annotation files are read as their format allows and every other problem is named
(nst_det.detection.data.checked): VOC XML for training and for evaluation through one parser, COCO
JSON before Detectron2's loader, boxes of zero size and files listed twice, and predictions files
whose entries repeat. The tool runs (tools/eval_predictions.py) are subprocesses from a folder
outside the repository; the other cases call the same functions in this process."""
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here)
from detectron2.data import DatasetCatalog
from nst_det.detection.data.build import detection_dataset_dicts
from nst_det.detection.data.checked import check_dataset_dicts, load_voc_checked
from nst_det.detection.data.registration import register_voc, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "eval_predictions.py")
CLASSES = ["circle", "square"]


def _object(name, box, difficult=True):
    corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    flag = "<difficult>0</difficult>" if difficult else ""
    return f"<object><name>{name}</name>{flag}<bndbox>{corners}</bndbox></object>"


def _write_voc(root, objects_per_image, split="test"):
    """A VOC-layout folder; ``objects_per_image``: {file id: XML text of its objects, or the whole
    file when it does not start with '<object>'}."""
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for file_id, objects in objects_per_image.items():
        xml = objects if not objects.startswith("<object>") else (
            f"<annotation><size><width>64</width><height>48</height></size>{objects}"
            f"</annotation>")
        with open(os.path.join(root, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(xml)
        Image.new("RGB", (64, 48)).save(os.path.join(root, "JPEGImages", f"{file_id}.jpg"))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(objects_per_image) + "\n")
    return root


def _run(cwd, *args):
    return subprocess.run([sys.executable, TOOL, *[str(a) for a in args]], cwd=str(cwd),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("eval_predictions", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ VOC: what the format allows

def test_fractional_corners_and_no_difficult_are_evaluated_by_the_tool(tmp_path):
    """before: the evaluation crashed in Detectron2's parse_rec (``int('5.5')``; without
    <difficult>: ``'NoneType' object has no attribute 'text'``) although training read them."""
    boxes = {"a": ("circle", (5.5, 4.25, 30.5, 20)), "b": ("square", (10, 12, 40, 44.75))}
    _write_voc(tmp_path / "voc", {i: _object(n, b, difficult=(i == "a"))
                                  for i, (n, b) in boxes.items()})
    predictions = [{"image_id": i, "category_id": CLASSES.index(n),
                    "bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1], "score": 0.9}
                   for i, (n, b) in boxes.items()]
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    proc = _run(tmp_path, "pred.json", "--voc-root", "voc", "--classes", "circle,square",
                "--output", "metrics.json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["AP"] == pytest.approx(100.0)
    # training reads the same files, with the same corners (Detectron2's 0-based shift)
    dicts = load_voc_checked(str(tmp_path / "voc"), "test", CLASSES)
    assert dicts[0]["annotations"][0]["bbox"] == [4.5, 3.25, 30.5, 20.0]


@pytest.mark.parametrize("xml, message", [
    (_object("circle", (2, 2, 20, 20)) + _object("hexagon", (3, 3, 9, 9)),
     "VOC annotation '{voc}/Annotations/x.xml': object 1 ('hexagon'): class 'hexagon' is not one "
     "of the data set's classes ['circle', 'square']"),
    ("<annotation><size><width>64</width><height>48</height></size><object><name>circ",
     "VOC annotation '{voc}/Annotations/x.xml' is not valid XML (cut short?): "),
    (_object("square", (20, 2, 20, 9)),
     "VOC annotation '{voc}/Annotations/x.xml': object 0 ('square'): box (xmin 20, ymin 2, xmax "
     "20, ymax 9) has xmax <= xmin or ymax <= ymin"),
    (_object("square", (2, 2, "ten", 9)),
     "VOC annotation '{voc}/Annotations/x.xml': object 0 ('square'): <bndbox> <xmax> missing or "
     "not a finite number"),
])
def test_bad_voc_files_are_named_in_training_and_in_evaluation(tmp_path, tool, xml, message):
    """before: 'hexagon' is not in list; a ParseError naming no file; an inverted box trained and
    evaluated silently."""
    voc = str(_write_voc(tmp_path / "voc", {"x": xml}))
    name = "_test_checked_voc"
    register_voc(name, voc, "test", 2012, CLASSES)
    try:
        with pytest.raises(ValueError, match=re.escape(message.format(voc=voc))):
            detection_dataset_dicts([name], "DATASETS.TRAIN")
    finally:
        unregister(name)
    from nst_det.detection.evaluation import voc_metrics
    with pytest.raises(ValueError, match=re.escape(message.format(voc=voc))):
        voc_metrics({}, os.path.join(voc, "Annotations", "{}.xml"),
                    os.path.join(voc, "ImageSets", "Main", "test.txt"), CLASSES, False)


def test_builtin_voc_sets_load_through_the_checks():
    for name in ("voc_2007_test", "voc_2012_trainval"):
        assert "_check_voc_when_loading" in DatasetCatalog[name].__qualname__, name
    assert "_check_coco_when_loading" in DatasetCatalog["coco_2017_val"].__qualname__


# ------------------------------------------------------------------ COCO JSON

def _coco(images=None, annotations=None):
    images = images if images is not None else [
        {"id": 1, "file_name": "a.jpg", "height": 48, "width": 64},
        {"id": 2, "file_name": "b.jpg", "height": 48, "width": 64}]
    annotations = annotations if annotations is not None else [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "area": 300,
         "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30], "area": 900,
         "iscrowd": 0}]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}]}


def _edit(data, where, index, **changes):
    data[where][index].update(changes)
    for key, value in changes.items():
        if value is None:
            del data[where][index][key]
    return data


@pytest.mark.parametrize("data, message", [
    (_edit(_coco(), "images", 1, height=None),
     "COCO annotation file 'gt.json': image id 2 (images[1]) lacks ['height']"),
    (_edit(_coco(), "annotations", 1, image_id=7),
     "COCO annotation file 'gt.json': annotation id 11 (annotations[1]) names image id 7, which "
     "is not in 'images'"),
    (_edit(_coco(), "annotations", 0, bbox=None),
     "COCO annotation file 'gt.json': annotation id 10 (annotations[0]) (image id 1) has no "
     "'bbox'"),
    (_edit(_coco(), "images", 1, file_name="a.jpg"),
     "COCO annotation file 'gt.json': image file 'a.jpg' is listed under two image ids, 1 and 2"),
    (_edit(_coco(), "annotations", 1, bbox=[5, 5, 0, 30]),
     "image 'b.jpg' (image id 2) of [\"ground truth 'gt.json' (--gt)\"] has 1 box(es) of zero or "
     "negative width or height: [[5.0, 5.0, 0.0, 30.0]]; an evaluation set cannot hold them"),
], ids=["no_height", "unknown_image", "no_bbox", "file_twice", "zero_width"])
def test_bad_coco_ground_truth_is_named_before_evaluating(tmp_path, tool, monkeypatch, data,
                                                          message):
    """before: KeyError: 'height'; an annotation of a missing image dropped silently; a missing
    bbox a KeyError in the mapper; a file under two ids and an empty box counted in the score."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "score": 0.9}]))
    with pytest.raises(ValueError, match=re.escape(message)):
        tool.main(["pred.json", "--gt", "gt.json"])


def test_empty_boxes_are_dropped_from_training_with_a_warning_and_refused_in_evaluation(caplog):
    dicts = [{"file_name": "a.jpg", "image_id": 1, "annotations": [
        {"bbox": [2, 3, 20, 15], "bbox_mode": 1, "category_id": 0},
        {"bbox": [5, 5, 0, 30], "bbox_mode": 1, "category_id": 0}]}]
    with caplog.at_level(logging.WARNING):
        kept = check_dataset_dicts([dict(d) for d in dicts], ["train_set"], evaluation=False)
    assert [a["bbox"] for a in kept[0]["annotations"]] == [[2, 3, 20, 15]]
    assert ("image 'a.jpg' (image id 1) of ['train_set'] has 1 box(es) of zero or negative width "
            "or height: [[5.0, 5.0, 0.0, 30.0]]: dropped from training") in caplog.text
    with pytest.raises(ValueError, match="an evaluation set cannot hold them"):
        check_dataset_dicts([dict(d) for d in dicts], ["test_set"], evaluation=True)
    twice = [{"file_name": "a.jpg", "image_id": "1"}, {"file_name": "a.jpg", "image_id": "2"}]
    with pytest.raises(ValueError, match=re.escape(
            "data set(s) ['s']: image file 'a.jpg' is listed under two image ids, '1' and '2'")):
        check_dataset_dicts(twice, ["s"], evaluation=False)


# ------------------------------------------------------------------ predictions files

def test_repeated_predictions_get_a_warning_with_their_count(tmp_path):
    """before: a file with every entry twice scored about half the AP without a word."""
    data = _coco()
    (tmp_path / "gt.json").write_text(json.dumps(data))
    once = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
            for a in data["annotations"]]
    (tmp_path / "pred.json").write_text(json.dumps(once + once))
    proc = _run(tmp_path, "pred.json", "--gt", "gt.json")
    assert proc.returncode == 0, proc.stderr
    assert ("predictions file 'pred.json': 2 of 4 entries repeat an earlier entry exactly (same "
            "image_id, category_id, bbox and score; the first: entry 2 (image_id 1)); each counts "
            "as one more detection, a false positive that lowers AP: remove the repeats"
            ) in proc.stderr, proc.stderr
