"""Tests of nst_det/data: the demo detection set generator (VOC layout + COCO JSON) and its
registration in Detectron2's catalogs through Detectron2's own VOC and COCO loaders."""
import filecmp
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from nst_det.detection.data import CLASS_NAMES, demo_data_exists, register_demo_datasets
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.data.demo_datasets import demo_dataset_names

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
    assert voc.dirname == os.path.join(datasets_root, "demo_det")
    assert voc.thing_classes == list(CLASS_NAMES) == coco.thing_classes
    assert coco.evaluator_type == "coco" and os.path.isfile(coco.json_file)
    assert coco.image_root == os.path.join(datasets_root, "demo_det", "JPEGImages")
    assert coco.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}


def test_demo_goes_through_detectron2_loaders(datasets_root):
    """The records are exactly what Detectron2's ``load_voc_instances`` / ``load_coco_json``
    give for the demo folder: the demo walks the code VOC and COCO users walk."""
    from detectron2.data.datasets import load_coco_json
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    dirname = os.path.join(datasets_root, "demo_det")
    assert DatasetCatalog.get("nst_demo_voc_val") == \
        load_voc_instances(dirname, "val", list(CLASS_NAMES))
    coco = MetadataCatalog.get("nst_demo_coco_val")
    assert DatasetCatalog.get("nst_demo_coco_val") == \
        load_coco_json(coco.json_file, coco.image_root, "nst_demo_coco_val")
    record = DatasetCatalog.get("nst_demo_voc_train")[0]
    tree = ET.parse(os.path.join(dirname, "Annotations", f"{record['image_id']}.xml"))
    corners = [int(tree.findtext(f"object/bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
    assert record["annotations"][0]["bbox"] == [corners[0] - 1, corners[1] - 1, *corners[2:]]
    assert record["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS


def test_split_of_one_image_and_empty_split_load(tmp_path):
    """``--num-test 1`` (one line in test.txt) and ``--num-val 0`` (an empty val.txt) load."""
    generate_demo_data(str(tmp_path / "demo_det"), seed=2, num_train=2, num_val=0, num_test=1,
                       height=64, width=80)
    register_demo_datasets(str(tmp_path))
    try:
        assert len(DatasetCatalog.get("nst_demo_voc_test")) == 1
        assert len(DatasetCatalog.get("nst_demo_coco_test")) == 1
        with pytest.warns(UserWarning, match="no data"):  # numpy's loadtxt on an empty file
            assert DatasetCatalog.get("nst_demo_voc_val") == []
    finally:
        register_demo_datasets()


@pytest.mark.parametrize("cls", CLASS_NAMES)
def test_box_is_tight_around_the_painted_shape(cls):
    from PIL import Image

    from nst_det.research.demo_data import draw_shape

    image = Image.new("RGB", (40, 30), (0, 0, 0))
    painted_shape = draw_shape(image, cls, (5, 4, 25, 24), (255, 0, 0))
    x0, y0, x1, y1 = painted_shape["box"]
    painted = np.asarray(image)[..., 0] > 0
    ys, xs = np.nonzero(painted)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x0, y0, x1, y1)
    assert 5 <= x0 and x1 <= 25 and 4 <= y0 and y1 <= 24
    assert painted_shape["area"] == painted.sum()
    # the three shapes fill different fractions of their box: the class is visible in the pixels
    fill = painted[y0:y1 + 1, x0:x1 + 1].mean()
    expected = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[cls]
    assert abs(fill - expected) < 0.08
    # the outline polygon (COCO segmentation) spans the painted box, in continuous coordinates
    polygon = np.asarray(painted_shape["polygon"]).reshape(-1, 2)
    assert len(polygon) >= 3
    assert np.allclose(polygon.min(0), (x0, y0), atol=1.0)
    assert np.allclose(polygon.max(0), (x1 + 1, y1 + 1), atol=1.0)


def test_unknown_shape_is_named():
    from PIL import Image

    from nst_det.research.demo_data import draw_shape

    with pytest.raises(KeyError, match="unknown shape 'star'; shapes: circle, square, triangle"):
        draw_shape(Image.new("RGB", (8, 8)), "star", (0, 0, 4, 4), (255, 0, 0))


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


def test_missing_annotation_is_named(tmp_path):
    """A file listed in the split but missing is named by Detectron2's loader."""
    generate_demo_data(str(tmp_path / "demo_det"), seed=1, **SIZES)
    os.remove(os.path.join(str(tmp_path), "demo_det", "Annotations", "000001.xml"))
    register_demo_datasets(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="000001.xml"):
            DatasetCatalog.get("nst_demo_voc_train")
    finally:
        register_demo_datasets()


def test_unknown_split_or_format():
    with pytest.raises(KeyError, match="splits"):
        demo_dataset_names("voc", "validation")


def test_too_small_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match="images of 30 x 80 are too small for the shapes: need at "
                                         "least 38 pixels on the short side"):
        generate_demo_data(str(tmp_path / "d"), num_train=1, num_val=0, num_test=1, height=30,
                           width=80)
