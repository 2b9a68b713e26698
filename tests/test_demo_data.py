"""Tests of nst_det/data: the demo detection set generator (VOC layout + COCO JSON) and its
registration in Detectron2's catalogs."""
import filecmp
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import nst_det  # noqa: F401  (first: Detectron2 compatibility)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from nst_det.data import CLASS_NAMES, demo_data_exists, generate_demo_data, register_demo_datasets
from nst_det.data.demo_datasets import demo_dataset_names, load_voc_detection

SIZES = dict(num_train=6, num_val=2, num_test=4, height=64, width=80)


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_demo_data(str(root / "demo_det"), seed=3, **SIZES)
    register_demo_datasets(str(root))
    yield str(root)
    register_demo_datasets()  # back to $DETECTRON2_DATASETS


def test_real_voc_layout(datasets_root):
    root = os.path.join(datasets_root, "demo_det")
    assert demo_data_exists(root)
    splits = {s: open(os.path.join(root, "ImageSets", "Main", f"{s}.txt")).read().split()
              for s in ("train", "val", "trainval", "test")}
    assert len(splits["train"]) == 6 and len(splits["val"]) == 2 and len(splits["test"]) == 4
    assert splits["trainval"] == splits["train"] + splits["val"]
    assert not set(splits["trainval"]) & set(splits["test"])
    for file_id in splits["trainval"] + splits["test"]:
        assert os.path.isfile(os.path.join(root, "JPEGImages", f"{file_id}.jpg"))
        tree = ET.parse(os.path.join(root, "Annotations", f"{file_id}.xml"))
        assert tree.findtext("filename") == f"{file_id}.jpg"
        width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        assert (width, height) == (80, 64)
        objects = tree.findall("object")
        assert objects
        for obj in objects:
            assert obj.findtext("name") in CLASS_NAMES and obj.findtext("difficult") == "0"
            x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 < x1 <= width and 1 <= y0 < y1 <= height  # 1-based, inclusive


def test_voc_and_coco_registrations_give_the_same_boxes(datasets_root):
    for split in ("train", "test"):
        voc = DatasetCatalog.get(demo_dataset_names("voc", split))
        coco = DatasetCatalog.get(demo_dataset_names("coco", split))
        assert [os.path.basename(d["file_name"]) for d in voc] == \
            [os.path.basename(d["file_name"]) for d in coco]
        for v, c in zip(voc, coco):
            v_boxes = sorted((a["category_id"], *np.round(a["bbox"], 3)) for a in v["annotations"])
            c_boxes = sorted(
                (a["category_id"], *np.round(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS), 3))
                for a in c["annotations"])
            assert v_boxes == c_boxes


def test_metadata_chooses_the_evaluators(datasets_root):
    voc = MetadataCatalog.get("nst_demo_voc_test")
    coco = MetadataCatalog.get("nst_demo_coco_test")
    assert voc.evaluator_type == "pascal_voc" and voc.year == 2007 and voc.split == "test"
    assert voc.thing_classes == list(CLASS_NAMES) == coco.thing_classes
    assert coco.evaluator_type == "coco" and os.path.isfile(coco.json_file)


@pytest.mark.parametrize("cls", CLASS_NAMES)
def test_box_is_tight_around_the_painted_shape(cls):
    from PIL import Image

    from nst_det.data.demo_generator import _draw_object

    image = Image.new("RGB", (40, 30), (0, 0, 0))
    x0, y0, x1, y1 = _draw_object(image, cls, (5, 4, 25, 24), (255, 0, 0))
    painted = np.asarray(image)[..., 0] > 0
    ys, xs = np.nonzero(painted)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x0, y0, x1, y1)
    assert 5 <= x0 and x1 <= 25 and 4 <= y0 and y1 <= 24
    # the three shapes fill different fractions of their box: the class is visible in the pixels
    fill = painted[y0:y1 + 1, x0:x1 + 1].mean()
    expected = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[cls]
    assert abs(fill - expected) < 0.08


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = generate_demo_data(str(tmp_path / "a"), seed=7, **SIZES)
    b = generate_demo_data(str(tmp_path / "b"), seed=7, **SIZES)
    c = generate_demo_data(str(tmp_path / "c"), seed=8, **SIZES)
    name = os.path.join("annotations", "instances_trainval.json")
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
    assert json.load(open(os.path.join(a, name))) != json.load(open(os.path.join(c, name)))


def test_missing_data_tells_how_to_generate_it(tmp_path):
    register_demo_datasets(str(tmp_path / "empty"))
    try:
        with pytest.raises(FileNotFoundError, match="generate_demo_data.py"):
            DatasetCatalog.get("nst_demo_voc_train")
        with pytest.raises(FileNotFoundError, match="generate_demo_data.py"):
            DatasetCatalog.get("nst_demo_coco_test")
    finally:
        register_demo_datasets()


def test_voc_loader_names_a_bad_annotation(tmp_path):
    root = generate_demo_data(str(tmp_path / "d"), seed=1, **SIZES)
    with pytest.raises(KeyError, match="not one of"):
        load_voc_detection(root, "train", ["circle"])
    os.remove(os.path.join(root, "Annotations", "000001.xml"))
    with pytest.raises(FileNotFoundError, match="000001.xml"):
        load_voc_detection(root, "train", CLASS_NAMES)


def test_unknown_split_or_format():
    with pytest.raises(KeyError, match="splits"):
        demo_dataset_names("voc", "validation")
