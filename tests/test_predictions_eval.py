"""Tests of tools/eval_predictions.py on data sets that are not registered: a COCO ground-truth
JSON (``--gt``) and a folder in PASCAL VOC layout (``--voc-root``), run as a subprocess of this
Python from a working directory outside the repository; and the refusal of bad predictions files
and options, each with the exact message.

The subprocess runs cost the start of Python with torch and Detectron2 (~5 s each), so they cover
the perfect predictions and one bad file end to end (exit status, message on stderr, no table);
the other bad inputs run the same ``main`` in this process, which raises the same errors."""
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from nst_det.detection.evaluation import predictions_dataset, register_voc_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "eval_predictions.py")

# COCO ground truth: 3 images, category ids 1 and 3 (not contiguous), boxes [x, y, w, h]
COCO_CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
COCO_BOXES = {1: [(1, [2, 3, 20, 15]), (3, [30, 20, 25, 20])], 2: [(1, [5, 5, 30, 30])],
              3: [(3, [10, 8, 12, 14]), (3, [40, 30, 20, 15])]}
GT = "gt/instances.json"
GT_NAME = f"ground truth '{GT}' (--gt)"
VOC = "VOC2007"
VOC_NAME = f"VOC folder '{VOC}' split 'test' (--voc-root)"
VOC_IDS = ["000001", "000002", "000003", "000004"]


def _write_coco(root):
    os.makedirs(os.path.join(root, "gt"))
    images, annotations = [], []
    for image_id, boxes in COCO_BOXES.items():
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": 48,
                       "width": 64})
        Image.new("RGB", (64, 48), (90, 120, 150)).save(os.path.join(root, "gt",
                                                                     f"{image_id:06d}.jpg"))
        for category_id, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": 0})
    with open(os.path.join(root, GT), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}, f)
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in annotations]


def _write_voc(root):
    """4 images of 5 objects each: every one of the 20 VOC classes once, 1-based inclusive boxes."""
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(root, VOC, sub))
    predictions = []
    for k, file_id in enumerate(VOC_IDS):
        objects = []
        for j in range(5):
            cls_id = 5 * k + j
            xmin, ymin = 1 + 22 * j, 1 + 40 * (j % 2)
            xmax, ymax = xmin + 19, ymin + 29
            objects.append(
                f"<object><name>{VOC_CLASS_NAMES[cls_id]}</name><pose>Unspecified</pose>"
                f"<truncated>0</truncated><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
                f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
            predictions.append({"image_id": file_id, "category_id": cls_id,
                                "bbox": [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1],
                                "score": 1.0})
        with open(os.path.join(root, VOC, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(f"<annotation><folder>{VOC}</folder><filename>{file_id}.jpg</filename><size>"
                    f"<width>120</width><height>80</height><depth>3</depth></size>"
                    f"{''.join(objects)}</annotation>")
        Image.new("RGB", (120, 80), (150, 120, 90)).save(
            os.path.join(root, VOC, "JPEGImages", f"{file_id}.jpg"))
    with open(os.path.join(root, VOC, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(VOC_IDS) + "\n")
    return predictions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A working directory outside the repository with gt/ (COCO), VOC2007/ and the perfect
    predictions of both (coco_perfect.json, voc_perfect.json)."""
    root = str(tmp_path_factory.mktemp("eval_predictions"))
    for name, predictions in (("coco_perfect.json", _write_coco(root)),
                              ("voc_perfect.json", _write_voc(root))):
        with open(os.path.join(root, name), "w") as f:
            json.dump(predictions, f)
    return root


def _run(root, *args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=root, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("eval_predictions", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_data(data, monkeypatch):
    monkeypatch.chdir(data)
    return data


def _predictions(root, kind):
    with open(os.path.join(root, f"{kind}_perfect.json")) as f:
        return json.load(f)


def _write(root, name, predictions):
    with open(os.path.join(root, name), "w") as f:
        f.write(predictions if isinstance(predictions, str) else json.dumps(predictions))
    return name


def _one_table(stdout):
    assert len(re.findall(r"^\| metric ", stdout, flags=re.M)) == 1, stdout


# ------------------------------------------------------------------ subprocess, end to end


def _perfect_run(data, predictions, source, output):
    """The tool on perfect predictions: its metrics, after checking the printed table."""
    proc = _run(data, predictions, *source, "--output", output)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{predictions} on "), proc.stdout
    _one_table(proc.stdout)
    assert re.search(r"^\| AP +\| 100\.000 +\| AP50 +\| 100\.000 ", proc.stdout, flags=re.M)
    with open(os.path.join(data, output)) as f:
        return proc.stdout, json.load(f)


def test_gt_perfect_predictions_give_ap_100(data):
    stdout, metrics = _perfect_run(data, "coco_perfect.json", ["--gt", GT], "coco_metrics.json")
    assert stdout.startswith(f"coco_perfect.json on {GT_NAME}:\n"), stdout
    for key in ("AP", "AP50", "AP75", "AR100", "AP-cat", "AP-dog"):
        assert metrics[key] == pytest.approx(100.0), key
    assert math.isnan(metrics["APl"])  # no large objects in 64 x 48 images


def test_voc_root_perfect_predictions_give_ap50_100(data):
    stdout, metrics = _perfect_run(data, "voc_perfect.json", ["--voc-root", VOC, "--split", "test"],
                                   "voc_metrics.json")
    assert stdout.startswith(f"voc_perfect.json on {VOC_NAME}:\n"), stdout
    for key in ["AP", "AP50", "AP50_11point", "AP50_area"] + [f"AP50-{c}" for c in VOC_CLASS_NAMES]:
        assert metrics[key] == pytest.approx(100.0), key


def test_bad_predictions_exit_nonzero_naming_the_entry_without_a_table(data):
    predictions = _predictions(data, "coco")
    predictions[1]["category_id"] = 2
    proc = _run(data, _write(data, "bad_category.json", predictions), "--gt", GT)
    assert proc.returncode != 0
    assert (f"ValueError: predictions file 'bad_category.json': entry 1 (image_id 1) has "
            f"category_id 2, which is not a category of {GT_NAME}; its category ids: [1, 3]"
            ) in proc.stderr, proc.stderr
    assert "| metric" not in proc.stdout


# ------------------------------------------------------------------ bad predictions, in process


def _set(index, field, value):
    def change(predictions):
        predictions[index][field] = value
    return change


def _delete(index, field):
    def change(predictions):
        del predictions[index][field]
    return change


COCO_CASES = {
    # name: (change of the perfect predictions, exception, message after "entry ")
    "unknown_category": (_set(1, "category_id", 2), ValueError,
                         f"1 (image_id 1) has category_id 2, which is not a category of {GT_NAME}; "
                         "its category ids: [1, 3]"),
    "zero_width": (_set(4, "bbox", [40, 30, 0, 15]), ValueError,
                   "4 (image_id 3) has bbox [40, 30, 0, 15]: width and height must be > 0"),
    "negative_height": (_set(2, "bbox", [5, 5, 30, -1]), ValueError,
                        "2 (image_id 2) has bbox [5, 5, 30, -1]: width and height must be > 0"),
    "bbox_of_3": (_set(2, "bbox", [5, 5, 30]), ValueError,
                  "2 (image_id 2) has bbox [5, 5, 30]: expected 4 numbers [x, y, w, h]"),
    "bbox_of_5": (_set(2, "bbox", [5, 5, 30, 30, 1]), ValueError,
                  "2 (image_id 2) has bbox [5, 5, 30, 30, 1]: expected 4 numbers [x, y, w, h]"),
    "bbox_string": (_set(0, "bbox", "2,3,20,15"), ValueError,
                    "0 (image_id 1) has bbox '2,3,20,15': expected 4 numbers [x, y, w, h]"),
    "bbox_non_numeric": (_set(0, "bbox", [2, "3", 20, 15]), ValueError,
                         "0 (image_id 1) has bbox [2, '3', 20, 15]: expected 4 numbers "
                         "[x, y, w, h]"),
    "bbox_nan": (_set(3, "bbox", [10, float("nan"), 12, 14]), ValueError,
                 "3 (image_id 3) has bbox [10, nan, 12, 14]: not finite"),
    "bbox_inf": (_set(3, "bbox", [10, 8, float("inf"), 14]), ValueError,
                 "3 (image_id 3) has bbox [10, 8, inf, 14]: not finite"),
    "score_string": (_set(4, "score", "high"), ValueError,
                     "4 (image_id 3) has score 'high': expected a number"),
    "score_null": (_set(4, "score", None), ValueError,
                   "4 (image_id 3) has score None: expected a number"),
    "score_nan": (_set(4, "score", float("nan")), ValueError,
                  "4 (image_id 3) has score nan: not finite"),
    "score_inf": (_set(4, "score", float("-inf")), ValueError,
                  "4 (image_id 3) has score -inf: not finite"),
    "category_float": (_set(0, "category_id", 1.0), ValueError,
                       "0 (image_id 1) has category_id 1.0: expected an integer"),
    "string_image_id": (_set(0, "image_id", "1"), ValueError,
                        f"0 (image_id '1') has image_id '1', which is not an image of {GT_NAME}; "
                        "its image ids are int, e.g. [1, 2, 3]"),
    "unknown_image_id": (_set(2, "image_id", 99), ValueError,
                         f"2 (image_id 99) has image_id 99, which is not an image of {GT_NAME}; "
                         "its image ids are int, e.g. [1, 2, 3]"),
    "list_image_id": (_set(2, "image_id", [2]), ValueError,
                      "2 (image_id [2]) has image_id [2]: expected an integer or a string"),
    "missing_score": (_delete(3, "score"), KeyError,
                      "3 (image_id 3) lacks ['score'] (needs ['image_id', 'category_id', 'bbox', "
                      "'score'])"),
}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_bad_entries_are_errors_naming_entry_field_and_value(tool, in_data, case):
    change, error, message = COCO_CASES[case]
    predictions = _predictions(in_data, "coco")
    change(predictions)
    name = _write(in_data, f"{case}.json", predictions)
    with pytest.raises(error, match=re.escape(f"predictions file '{name}': entry {message}")):
        tool.main([name, "--gt", GT])


def test_every_entry_is_checked_before_evaluating_and_the_first_bad_one_named(tool, in_data):
    predictions = _predictions(in_data, "coco")
    predictions[1]["bbox"] = [30, 20, 25, 0]
    predictions[3]["category_id"] = 7
    predictions[4]["score"] = "1"
    name = _write(in_data, "three_bad.json", predictions)
    with pytest.raises(ValueError, match=re.escape(
            f"predictions file '{name}': entry 1 (image_id 1) has bbox [30, 20, 25, 0]: width and "
            "height must be > 0 (2 more bad entries of 5)")):
        tool.main([name, "--gt", GT])


@pytest.mark.parametrize("content, message", [
    ("[]", "predictions file 'file.json' is an empty list: it holds no detections"),
    ('{"image_id": 1}',
     "predictions file 'file.json' must be a JSON list of detections, found dict"),
    ("[{'image_id': 1}]", "predictions file 'file.json' is not valid JSON: Expecting property name "
                          "enclosed in double quotes: line 1 column 3 (char 2)"),
    ("[1, 2]", "predictions file 'file.json': entry 0 is int 1, expected an object with keys "
               "['image_id', 'category_id', 'bbox', 'score'] (1 more bad entries of 2)"),
])
def test_bad_predictions_files_are_errors_naming_the_file(tool, in_data, content, message):
    _write(in_data, "file.json", content)
    with pytest.raises(ValueError, match=re.escape(message)):
        tool.main(["file.json", "--gt", GT])


def test_voc_image_ids_are_the_file_id_strings(tool, in_data):
    cases = [
        ("voc_int_id.json", 0, "image_id", 1, "entry 0 (image_id 1) has image_id 1, which is not an "
         f"image of {VOC_NAME}; its image ids are str, e.g. ['000001', '000002', '000003']"),
        ("voc_category.json", 6, "category_id", 20, "entry 6 (image_id '000002') has category_id "
         f"20, which is not a category of {VOC_NAME}; its category ids: 0..19"),
    ]
    for filename, index, field, value, message in cases:
        predictions = _predictions(in_data, "voc")
        predictions[index][field] = value
        name = _write(in_data, filename, predictions)
        with pytest.raises(ValueError, match=re.escape(f"predictions file '{name}': {message}")):
            tool.main([name, "--voc-root", VOC])
    # the same rule with the COCO metric (Detectron2's conversion keeps the file ids)
    with pytest.raises(ValueError, match=re.escape("its category ids: 0..19")):
        tool.main([name, "--voc-root", VOC, "--metric", "coco"])


def test_missing_predictions_file_is_named(tool, in_data):
    with pytest.raises(FileNotFoundError,
                       match=re.escape("predictions file 'nothing.json' does not exist")):
        tool.main(["nothing.json", "--gt", GT])


# ------------------------------------------------------------------ the data set options


def test_exactly_one_of_dataset_gt_voc_root(tool, in_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["coco_perfect.json"])
    assert exit_info.value.code == 2
    assert "error: one of the arguments --dataset --gt --voc-root is required" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["coco_perfect.json", "--gt", GT, "--voc-root", VOC])
    assert exit_info.value.code == 2
    assert "error: argument --voc-root: not allowed with argument --gt" in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(
            "give exactly one of --dataset, --gt, --voc-root; got --gt, --voc-root")):
        predictions_dataset(gt=GT, voc_root=VOC)
    with pytest.raises(ValueError, match=re.escape("--image-root goes with --gt")):
        tool.main(["voc_perfect.json", "--voc-root", VOC, "--image-root", "gt"])
    with pytest.raises(ValueError, match=re.escape("--split, --year go with --voc-root")):
        tool.main(["coco_perfect.json", "--gt", GT, "--split", "val", "--year", "2007"])


@pytest.mark.parametrize("args, message", [
    (["--gt", "gt/nothing.json"], "ground-truth file 'gt/nothing.json' (--gt) does not exist"),
    (["--gt", GT, "--image-root", "no_images"],
     "image root 'no_images' (--image-root) is not a directory"),
    (["--voc-root", "VOC2012"], "VOC folder 'VOC2012' (--voc-root) is not a directory"),
    (["--voc-root", VOC, "--split", "val"],
     f"VOC image set '{os.path.join(VOC, 'ImageSets', 'Main', 'val.txt')}' (--voc-root, "
     "--split val) does not exist"),
])
def test_missing_ground_truth_is_named_with_its_option(tool, in_data, args, message):
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        tool.main(["coco_perfect.json"] + args)


def test_unusable_ground_truth_is_named(tool, in_data):
    _write(in_data, "gt/not_coco.json", "[]")
    with pytest.raises(ValueError, match=re.escape(
            "COCO annotation file 'gt/not_coco.json' is not a COCO instances JSON (an object with "
            "'images' and 'annotations') (--gt)")):
        tool.main(["coco_perfect.json", "--gt", "gt/not_coco.json"])
    with pytest.raises(ValueError, match=re.escape(
            f"VOC annotation '{VOC}/Annotations/000001.xml': object 0 ('aeroplane'): class "
            "'aeroplane' is not one of the data set's classes ['cat', 'dog'] (--voc-root "
            f"'{VOC}'); give the classes with --classes a,b,c")):
        tool.main(["voc_perfect.json", "--voc-root", VOC, "--classes", "cat,dog"])
    with pytest.raises(ValueError, match=re.escape(
            "--classes must name distinct, non-empty classes, got ['cat', '']")):
        tool.main(["voc_perfect.json", "--voc-root", VOC, "--classes", "cat,"])


def test_voc_year_follows_the_folder_name(in_data):
    meta = MetadataCatalog.get(register_voc_folder(VOC))
    assert (meta.year, meta.split, meta.evaluator_type) == (2007, "test", "pascal_voc")
    assert meta.thing_classes == list(VOC_CLASS_NAMES)
    shutil.copytree(VOC, "my_voc", dirs_exist_ok=True)
    assert MetadataCatalog.get(register_voc_folder("my_voc")).year == 2012
    assert MetadataCatalog.get(register_voc_folder("my_voc", year=2007)).year == 2007
